"""Joins embeddings (HDF5) with labels, pools per-protein inputs, and pads batches.

Per-residue labels come from a NetSurfP-2.0 CSV (`protjax.data.readers.
read_netsurfp_csv`, ids are the CSV's row indices unless it has an `id`
column); per-protein labels from a DeepLoc FASTA (`>ACC Location-M|S|U`, or bare
ids plus a `Label,Class` CSV). Every labelled record must have an embedding of
the right length: a missing id or a length mismatch is an InputError naming the
record and the file.

DeepLoc label decisions (documented in the report):
  * `Cytoplasm-Nucleus` (validation file only) is not one of the ten classes:
    its location label is dropped (no location loss, not in Q10); its
    membrane label, if M or S, still counts.
  * membrane: M -> "membrane", S -> "soluble"; U or absent -> no membrane label
    (no membrane loss, not in Q2).
  * a record's location comes from its header; a bare header takes it from
    the `Label,Class` CSV(s); a header and a CSV that disagree are an error.
  * several label sources (the 10-class file and the membrane-labelled one)
    are merged by sequence (`dedupe_by_sequence`): one protein per distinct
    sequence, with every head's label any copy has; copies that disagree on
    a head leave that head unlabelled for the protein.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from protjax import embeddings_io
from protjax.data import readers
from protjax.errors import InputError

DSSP3 = readers.DSSP3  # "HEC"
DSSP8 = readers.DSSP8  # "GHIBESTC"
LOCATIONS = readers.DEEPLOC_LOCATIONS  # the ten classes, fixed order
DROPPED_LOCATIONS = ("Cytoplasm-Nucleus",)
MEMBRANE = ("membrane", "soluble")  # from header suffixes M, S
POOLINGS = ("mean", "min", "max", "concat")

_DSSP3_ID = {c: i for i, c in enumerate(DSSP3)}
_DSSP8_ID = {c: i for i, c in enumerate(DSSP8)}


@dataclasses.dataclass
class ResidueSet:
  """Per-residue probe data, one entry per protein (lists of `[length]` arrays)."""
  ids: list[str]
  features: list[np.ndarray]  # [length, embed] float16/float32 as stored
  dssp3: list[np.ndarray]  # [length] int32 in DSSP3 order
  dssp8: list[np.ndarray]  # [length] int32 in DSSP8 order
  train_mask: list[np.ndarray]  # [length] bool: resolved residues (loss)
  score_mask: list[np.ndarray]  # [length] bool: resolved (& cb513_mask) (Q3/Q8)
  embed_model: str = ""
  dim: int = 0

  def __len__(self) -> int:
    return len(self.ids)

  def subset(self, idx: Sequence[int]) -> "ResidueSet":
    pick = lambda xs: [xs[i] for i in idx]
    return ResidueSet(pick(self.ids), pick(self.features), pick(self.dssp3),
                      pick(self.dssp8), pick(self.train_mask), pick(self.score_mask),
                      self.embed_model, self.dim)


@dataclasses.dataclass
class ProteinSet:
  """Per-protein probe data: pooled features and labels (-1 = no label)."""
  ids: list[str]
  sequences: list[str]
  features: np.ndarray  # [proteins, pooled] float32
  location: np.ndarray  # [proteins] int32, index into LOCATIONS or -1
  membrane: np.ndarray  # [proteins] int32, index into MEMBRANE or -1
  embed_model: str = ""
  dim: int = 0
  pooling: str = "mean"

  def __len__(self) -> int:
    return len(self.ids)

  def subset(self, idx: Sequence[int]) -> "ProteinSet":
    idx = np.asarray(idx, np.int64)
    return ProteinSet([self.ids[i] for i in idx], [self.sequences[i] for i in idx],
                      self.features[idx], self.location[idx], self.membrane[idx],
                      self.embed_model, self.dim, self.pooling)


def concat_protein_sets(sets: Sequence[ProteinSet]) -> ProteinSet:
  """Concatenates protein sets from the same embedding model and pooling."""
  first = sets[0]
  for s in sets[1:]:
    if (s.embed_model, s.dim, s.pooling) != (first.embed_model, first.dim, first.pooling):
      raise InputError(f"cannot combine {s.embed_model}/{s.dim}/{s.pooling} with "
                       f"{first.embed_model}/{first.dim}/{first.pooling}")
  return ProteinSet(sum((s.ids for s in sets), []), sum((s.sequences for s in sets), []),
                    np.concatenate([s.features for s in sets]),
                    np.concatenate([s.location for s in sets]),
                    np.concatenate([s.membrane for s in sets]),
                    first.embed_model, first.dim, first.pooling)


def pool(x: np.ndarray, pooling: str) -> np.ndarray:
  """Pools `[length, embed]` over the length: `[embed]` (`[3 * embed]` for concat:
  min, max, mean)."""
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"expected a non-empty [length, embed] array, got {x.shape}")
  x = x.astype(np.float32)
  if pooling == "mean":
    return x.mean(0)
  if pooling == "min":
    return x.min(0)
  if pooling == "max":
    return x.max(0)
  if pooling == "concat":
    return np.concatenate([x.min(0), x.max(0), x.mean(0)])
  raise InputError(f"unknown pooling {pooling!r}, expected one of {POOLINGS}")


def _open_checked(path: str, *, dim: Optional[int], model: Optional[str]
                  ) -> embeddings_io.EmbeddingFile:
  ef = embeddings_io.EmbeddingFile(path)
  try:
    embeddings_io.check_compatible(ef.attrs, ef.path, dim=dim, model=model)
  except InputError:
    ef.close()
    raise
  return ef


def _embedding_for(ef: embeddings_io.EmbeddingFile, rid: str, seq: str,
                   labels_path: str) -> np.ndarray:
  if rid not in ef:
    raise InputError(f"no embedding for this record of {labels_path}", path=ef.path,
                     record=rid)
  arr = ef[rid]
  if ef.attrs.kind == "per_residue" and arr.shape[0] != len(seq):
    raise InputError(f"embedding has {arr.shape[0]} residues but the sequence in "
                     f"{labels_path} has {len(seq)}", path=ef.path, record=rid)
  return arr


def load_residue_set(embeddings: str | os.PathLike, labels: str | os.PathLike, *,
                     cb513: bool = False, dim: Optional[int] = None,
                     model: Optional[str] = None) -> ResidueSet:
  """Loads a NetSurfP CSV and the per-residue embeddings of its records.

  Args:
    embeddings: per-residue HDF5 file (`[length, embed]` per protein).
    labels: NetSurfP-2.0 CSV (dssp3, dssp8, optional disorder, cb513_mask).
    cb513: score only residues with cb513_mask == 1 (besides disorder == 1).
    dim, model: if given, the embedding file must match (a probe's input).
  """
  embeddings, labels = os.fspath(embeddings), os.fspath(labels)
  out = ResidueSet([], [], [], [], [], [])
  with _open_checked(embeddings, dim=dim, model=model) as ef:
    if ef.attrs.kind != "per_residue":
      raise InputError("per-residue probes need per_residue embeddings, file has "
                       f"{ef.attrs.kind}", path=embeddings)
    out.embed_model, out.dim = ef.attrs.model, ef.attrs.dim
    for rid, seq, lab in readers.read_netsurfp_csv(labels):
      for col in ("dssp3", "dssp8"):
        if col not in lab:
          raise InputError(f"no {col} column", path=labels)
      if cb513 and "cb513_mask" not in lab:
        raise InputError("--cb513 needs a cb513_mask column", path=labels)
      arr = _embedding_for(ef, rid, seq, labels)
      disorder = lab.get("disorder")
      resolved = (np.ones(len(seq), bool) if disorder is None
                  else np.asarray(disorder, np.int8) == 1)
      score = resolved.copy()
      if cb513:
        score &= np.asarray(lab["cb513_mask"], np.int8) == 1
      out.ids.append(rid)
      # Kept in the stored dtype (float16 LM embeddings stay half the size);
      # batches are assembled in float32.
      out.features.append(arr)
      out.dssp3.append(np.array([_DSSP3_ID[c] for c in lab["dssp3"]], np.int32))
      out.dssp8.append(np.array([_DSSP8_ID[c] for c in lab["dssp8"]], np.int32))
      out.train_mask.append(resolved)
      out.score_mask.append(score)
  return out


def _label_table(labels_csv) -> dict[str, tuple[str, str]]:
  """id -> (class, CSV path) over one `Label,Class` CSV or several (an id in
  two of them with different classes is an error)."""
  paths = [labels_csv] if isinstance(labels_csv, (str, os.PathLike)) else list(labels_csv)
  table: dict[str, tuple[str, str]] = {}
  for path in map(os.fspath, paths):
    for rid, cls in readers.read_deeploc_labels_csv(path).items():
      if rid in table and table[rid][0] != cls:
        raise InputError(f"class {cls!r} here, {table[rid][0]!r} in {table[rid][1]}",
                         path=path, record=rid)
      table[rid] = (cls, path)
  return table


def read_deeploc(fasta: str | os.PathLike, labels_csv=None
                 ) -> Iterator[tuple[str, str, int, int]]:
  """Yields `(id, sequence, location index or -1, membrane index or -1)`.

  Locations come from the headers (`>ACC Location-M|S|U`); a bare header
  takes its location from `labels_csv` (one `Label,Class` CSV or several).
  A header and a CSV that disagree are an error.
  """
  fasta = os.fspath(fasta)
  table = _label_table(labels_csv) if labels_csv is not None else None
  for rid, seq, location, membrane in readers.read_deeploc_fasta(fasta):
    where = fasta
    if table is not None and rid in table:
      cls, csv_path = table[rid]
      if location is not None and location != cls:
        raise InputError(f"header says {location!r}, {csv_path} says {cls!r}", path=fasta,
                         record=rid)
      location, where = cls, csv_path
    if location is None:
      if table is not None:
        raise InputError(f"no location in the header and no label for this record of {fasta}",
                         path=", ".join(sorted({p for _, p in table.values()})), record=rid)
      raise InputError("no location label (header '>ID Location-M|S|U' or a "
                       "Label,Class CSV expected)", path=fasta, record=rid)
    if location in LOCATIONS:
      loc = LOCATIONS.index(location)
    elif location in DROPPED_LOCATIONS:
      loc = -1
    else:
      raise InputError(f"unknown location {location!r}, expected one of "
                       f"{', '.join(LOCATIONS + DROPPED_LOCATIONS)}", path=where, record=rid)
    mem = {"M": 0, "S": 1}.get(membrane or "U", -1)
    yield rid, seq, loc, mem


def _merged_label(labels: np.ndarray) -> tuple[int, bool]:
  """(label, conflict) of one head over copies of a sequence: the label the
  labelled copies share, or -1 (no label, or copies that disagree)."""
  known = set(int(x) for x in labels if x >= 0)
  if len(known) == 1:
    return known.pop(), False
  return -1, len(known) > 1


def dedupe_by_sequence(data: ProteinSet) -> tuple[ProteinSet, dict]:
  """One protein per distinct sequence, the first copy's id and features,
  each head's label merged over the copies (`_merged_label`).

  Returns the set and its counts: `n_duplicates_merged` (copies folded into
  an earlier one), `n_conflicting_location` / `n_conflicting_membrane`
  (proteins whose copies disagree on that head).
  """
  first: dict[str, list[int]] = {}
  for i, seq in enumerate(data.sequences):
    first.setdefault(seq, []).append(i)
  keep = [idx[0] for idx in first.values()]
  out = data.subset(keep)
  conflicts = {"location": 0, "membrane": 0}
  for row, idx in enumerate(first.values()):
    if len(idx) == 1:
      continue
    for head in conflicts:
      label, conflict = _merged_label(getattr(data, head)[idx])
      getattr(out, head)[row] = label
      conflicts[head] += conflict
  return out, {"n_duplicates_merged": len(data) - len(keep),
               "n_conflicting_location": conflicts["location"],
               "n_conflicting_membrane": conflicts["membrane"]}


def load_protein_set(embeddings: str | os.PathLike, fasta: str | os.PathLike,
                     labels_csv=None, *,
                     pooling: str = "mean", dim: Optional[int] = None,
                     model: Optional[str] = None) -> ProteinSet:
  """Loads DeepLoc labels and pooled embeddings of their records.

  Per-residue embeddings are pooled with `pooling`; per-protein embedding files
  are used as they are (only `pooling="mean"` is accepted for them, the
  pooling protjax-embed applies).
  """
  if pooling not in POOLINGS:
    raise InputError(f"unknown pooling {pooling!r}, expected one of {POOLINGS}")
  embeddings, fasta = os.fspath(embeddings), os.fspath(fasta)
  ids, seqs, feats, locs, mems = [], [], [], [], []
  with _open_checked(embeddings, dim=dim, model=model) as ef:
    if ef.attrs.kind == "per_protein" and pooling != "mean":
      raise InputError(f"pooling {pooling!r} needs per_residue embeddings; this file "
                       "holds per_protein (mean) embeddings", path=embeddings)
    for rid, seq, loc, mem in read_deeploc(fasta, labels_csv):
      arr = _embedding_for(ef, rid, seq, fasta)
      ids.append(rid)
      seqs.append(seq)
      feats.append(pool(arr, pooling) if arr.ndim == 2 else arr.astype(np.float32))
      locs.append(loc)
      mems.append(mem)
    return ProteinSet(ids, seqs, np.stack(feats), np.array(locs, np.int32),
                      np.array(mems, np.int32), ef.attrs.model, ef.attrs.dim, pooling)


# --- batching ------------------------------------------------------------------
def bucket_length(n: int) -> int:
  """Padded length for a chain of `n` residues: few distinct shapes (one jit each)."""
  for b in (64, 128, 256, 384, 512, 768, 1024, 1536, 2048):
    if n <= b:
      return b
  return -(-n // 1024) * 1024


def residue_batches(lengths: Sequence[int], *, batch_tokens: int,
                    rng: Optional[np.random.Generator] = None
                    ) -> list[tuple[np.ndarray, int, int]]:
  """Groups proteins by padded length: `[(indices, padded_length, batch_size)]`.

  A bucket of padded length L holds `max(1, batch_tokens // L)` proteins per
  batch; a bucket's last batch is filled with empty rows, so each bucket is one
  shape. With `rng`, proteins are shuffled within buckets and batches across
  buckets; without, the order is deterministic.
  """
  by_bucket: dict[int, list[int]] = {}
  for i, n in enumerate(lengths):
    by_bucket.setdefault(bucket_length(int(n)), []).append(i)
  batches = []
  for blen in sorted(by_bucket):
    idx = np.array(by_bucket[blen])
    if rng is not None:
      idx = rng.permutation(idx)
    bsz = max(1, batch_tokens // blen)
    for s in range(0, len(idx), bsz):
      batches.append((idx[s:s + bsz], blen, bsz))
  if rng is not None:
    batches = [batches[i] for i in rng.permutation(len(batches))]
  return batches


def pad_residue_batch(data: ResidueSet, idx: np.ndarray, length: int, size: int,
                      mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None
                      ) -> dict:
  """Numpy batch: x `[size, length, embed]`, mask, dssp3, dssp8, train/score masks.

  With `mean` and `std` (`[embed]`) the residues are standardised; padding stays 0.
  """
  e = data.features[idx[0]].shape[1]
  b = {"x": np.zeros((size, length, e), np.float32),
       "mask": np.zeros((size, length), np.float32),
       "dssp3": np.zeros((size, length), np.int32),
       "dssp8": np.zeros((size, length), np.int32),
       "train_mask": np.zeros((size, length), np.float32)}
  for row, i in enumerate(idx):
    n = data.features[i].shape[0]
    b["x"][row, :n] = data.features[i] if mean is None else (data.features[i] - mean) / std
    b["mask"][row, :n] = 1
    b["dssp3"][row, :n] = data.dssp3[i]
    b["dssp8"][row, :n] = data.dssp8[i]
    b["train_mask"][row, :n] = data.train_mask[i]
  return b


def residue_moments(data: ResidueSet) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature mean and standard deviation over all residues, `[embed]` each
  (two float64 passes, one protein at a time: the features may be float16)."""
  count = sum(f.shape[0] for f in data.features)
  mean = sum(np.asarray(f, np.float64).sum(0) for f in data.features) / count
  var = sum(((np.asarray(f, np.float64) - mean) ** 2).sum(0) for f in data.features) / count
  std = np.sqrt(var) + 1e-6  # constant columns (e.g. unused one-hot ones) stay finite
  return mean.astype(np.float32), std.astype(np.float32)


def protein_batches(n: int, *, batch_size: int, rng: Optional[np.random.Generator] = None
                    ) -> list[np.ndarray]:
  """Index batches over `n` proteins (shuffled with `rng`); last one may be short."""
  idx = rng.permutation(n) if rng is not None else np.arange(n)
  return [idx[s:s + batch_size] for s in range(0, n, batch_size)]


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random (train, validation) index split with `fraction` held out (at least 1)."""
  if not 0 < fraction < 1:
    raise InputError(f"validation fraction must be in (0, 1), got {fraction}")
  if n < 2:
    raise InputError(f"need at least 2 proteins to hold out a validation split, got {n}")
  perm = np.random.default_rng(seed).permutation(n)
  n_val = min(n - 1, max(1, int(round(fraction * n))))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])
