"""Baseline per-residue features that need no language model.

The paper's DeepOneHot and DeepBLOSUM62 baselines run the same probes on these
rows instead of embeddings; `featurize_records` writes them in the embedding
HDF5 layout (`protjax.embeddings_io`) so the probes read them unchanged.

* one-hot: 21 columns, the 20 standard residues in BLOSUM order
  `ARNDCQEGHILKMFPSTWYV`, then one column for everything else (X and the rare
  B Z U O, which ProtTrans maps to X).
* BLOSUM62: the residue's row of the NCBI BLOSUM62 matrix restricted to the 20
  standard residue columns (integer log-odds scores in half-bits, unscaled).
  B and Z use their own rows; X, U and O use the X row.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

import numpy as np

from protjax import embeddings_io
from protjax.errors import InputError

STANDARD = "ARNDCQEGHILKMFPSTWYV"

# NCBI BLOSUM62, rows and columns in the order of _BLOSUM_ORDER.
_BLOSUM_ORDER = "ARNDCQEGHILKMFPSTWYVBZX"
_BLOSUM62_ROWS = """
A  4 -1 -2 -2  0 -1 -1  0 -2 -1 -1 -1 -1 -2 -1  1  0 -3 -2  0 -2 -1  0
R -1  5  0 -2 -3  1  0 -2  0 -3 -2  2 -1 -3 -2 -1 -1 -3 -2 -3 -1  0 -1
N -2  0  6  1 -3  0  0  0  1 -3 -3  0 -2 -3 -2  1  0 -4 -2 -3  3  0 -1
D -2 -2  1  6 -3  0  2 -1 -1 -3 -4 -1 -3 -3 -1  0 -1 -4 -3 -3  4  1 -1
C  0 -3 -3 -3  9 -3 -4 -3 -3 -1 -1 -3 -1 -2 -3 -1 -1 -2 -2 -1 -3 -3 -2
Q -1  1  0  0 -3  5  2 -2  0 -3 -2  1  0 -3 -1  0 -1 -2 -1 -2  0  3 -1
E -1  0  0  2 -4  2  5 -2  0 -3 -3  1 -2 -3 -1  0 -1 -3 -2 -2  1  4 -1
G  0 -2  0 -1 -3 -2 -2  6 -2 -4 -4 -2 -3 -3 -2  0 -2 -2 -3 -3 -1 -2 -1
H -2  0  1 -1 -3  0  0 -2  8 -3 -3 -1 -2 -1 -2 -1 -2 -2  2 -3  0  0 -1
I -1 -3 -3 -3 -1 -3 -3 -4 -3  4  2 -3  1  0 -3 -2 -1 -3 -1  3 -3 -3 -1
L -1 -2 -3 -4 -1 -2 -3 -4 -3  2  4 -2  2  0 -3 -2 -1 -2 -1  1 -4 -3 -1
K -1  2  0 -1 -3  1  1 -2 -1 -3 -2  5 -1 -3 -1  0 -1 -3 -2 -2  0  1 -1
M -1 -1 -2 -3 -1  0 -2 -3 -2  1  2 -1  5  0 -2 -1 -1 -1 -1  1 -3 -1 -1
F -2 -3 -3 -3 -2 -3 -3 -3 -1  0  0 -3  0  6 -4 -2 -2  1  3 -1 -3 -3 -1
P -1 -2 -2 -1 -3 -1 -1 -2 -2 -3 -3 -1 -2 -4  7 -1 -1 -4 -3 -2 -2 -1 -2
S  1 -1  1  0 -1  0  0  0 -1 -2 -2  0 -1 -2 -1  4  1 -3 -2 -2  0  0  0
T  0 -1  0 -1 -1 -1 -1 -2 -2 -1 -1 -1 -1 -2 -1  1  5 -2 -2  0 -1 -1  0
W -3 -3 -4 -4 -2 -2 -3 -2 -2 -3 -2 -3 -1  1 -4 -3 -2 11  2 -3 -4 -3 -2
Y -2 -2 -2 -3 -2 -1 -2 -3  2 -1 -1 -2 -1  3 -3 -2 -2  2  7 -1 -3 -2 -1
V  0 -3 -3 -3 -1 -2 -2 -3 -3  3  1 -2  1 -1 -2 -2  0 -3 -1  4 -3 -2 -1
B -2 -1  3  4 -3  0  1 -1  0 -3 -4  0 -3 -3 -2  0 -1 -4 -3 -3  4  1 -1
Z -1  0  0  1 -3  3  4 -2  0 -3 -3  1 -1 -3 -1  0 -1 -3 -2 -2  1  4 -1
X  0 -1 -1 -1 -2 -1 -1 -1 -1 -1 -1 -1 -1 -1 -2  0  0 -2 -1 -1 -1 -1 -1
"""


def _parse_blosum() -> np.ndarray:
  rows = [line.split() for line in _BLOSUM62_ROWS.strip().splitlines()]
  assert "".join(r[0] for r in rows) == _BLOSUM_ORDER
  return np.array([[int(v) for v in r[1:]] for r in rows], dtype=np.float32)


BLOSUM62 = _parse_blosum()  # [23, 23], order _BLOSUM_ORDER


def _byte_table(index_of: dict[str, int], default: int) -> np.ndarray:
  table = np.full(256, -1, dtype=np.int32)
  for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    table[ord(c)] = table[ord(c.lower())] = index_of.get(c, default)
  return table


# Row index of each letter: one-hot rows 0..19 standard, 20 other.
_ONEHOT_INDEX = _byte_table({c: i for i, c in enumerate(STANDARD)}, default=20)
_BLOSUM_INDEX = _byte_table({c: i for i, c in enumerate(_BLOSUM_ORDER)},
                            default=_BLOSUM_ORDER.index("X"))
_ONEHOT_TABLE = np.eye(21, dtype=np.float32)
_BLOSUM_TABLE = BLOSUM62[:, :20]  # [23 residues, 20 standard columns]


def _indices(seq: str, table: np.ndarray, record: Optional[str]) -> np.ndarray:
  data = np.frombuffer(seq.encode("latin-1", "replace"), np.uint8)
  idx = table[data]
  bad = np.flatnonzero(idx < 0)
  if bad.size:
    raise InputError(f"character {seq[bad[0]]!r} is not a residue", record=record,
                     position=int(bad[0]) + 1)
  return idx


def onehot(seq: str, *, record: Optional[str] = None) -> np.ndarray:
  """`[length, 21]` float32 one-hot rows (column 20: X/B/Z/U/O)."""
  return _ONEHOT_TABLE[_indices(seq, _ONEHOT_INDEX, record)]


def blosum62(seq: str, *, record: Optional[str] = None) -> np.ndarray:
  """`[length, 20]` float32 BLOSUM62 rows against the 20 standard residues."""
  return _BLOSUM_TABLE[_indices(seq, _BLOSUM_INDEX, record)]


FEATURIZERS: dict[str, tuple[Callable[..., np.ndarray], int]] = {
    "onehot": (onehot, 21),
    "blosum62": (blosum62, 20),
}


def featurize_records(kind: str, records: Iterable[tuple[str, str]],
                      out_path: str | os.PathLike, *, source: str = "") -> int:
  """Writes per-residue baseline features of `(id, sequence)` records to HDF5.

  The file's `model` attribute is the featuriser's name ("onehot" or
  "blosum62"), `kind` is per_residue. Resumes a partial run (ids already
  written are skipped). Returns the number of proteins in the file.
  """
  if kind not in FEATURIZERS:
    raise InputError(f"unknown featuriser {kind!r}, expected one of {sorted(FEATURIZERS)}")
  fn, dim = FEATURIZERS[kind]
  options = {"featurizer": kind, "columns": STANDARD + ("X" if kind == "onehot" else ""),
             "source": os.path.basename(source)}
  with embeddings_io.EmbeddingWriter(out_path, model=kind, dim=dim, kind="per_residue",
                                     options=options, dtype=np.float32) as w:
    done = w.done_ids()
    try:
      for pid, seq in records:
        if pid in done:
          continue
        try:
          w.write(pid, fn(seq, record=pid))
        except InputError as e:
          if e.path is None:
            raise InputError(e.problem, path=source or None, record=pid,
                             position=e.position) from None
          raise
    except InputError:
      w.discard()
      raise
    return len(w)
