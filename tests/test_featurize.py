"""One-hot and BLOSUM62 baseline features, written in the embedding layout."""
from __future__ import annotations

import os

import numpy as np
import pytest

from protjax import embeddings_io as eio
from protjax import featurize
from protjax.errors import InputError


def test_onehot_rows():
  x = featurize.onehot("ARvXBU")
  assert x.shape == (6, 21) and x.dtype == np.float32
  np.testing.assert_array_equal(x.sum(1), np.ones(6))
  assert x[0, 0] == 1 and x[1, 1] == 1 and x[2, featurize.STANDARD.index("V")] == 1
  # X and the rare B, U all go to the 21st column.
  np.testing.assert_array_equal(x[3:, 20], [1, 1, 1])


def test_blosum62_known_entries():
  m = featurize.BLOSUM62
  assert m.shape == (23, 23)
  np.testing.assert_array_equal(m, m.T)  # BLOSUM62 is symmetric
  x = featurize.blosum62("WCAX")
  assert x.shape == (4, 20)
  s = featurize.STANDARD
  assert x[0, s.index("W")] == 11 and x[1, s.index("C")] == 9 and x[2, s.index("A")] == 4
  assert x[0, s.index("F")] == 1 and x[0, s.index("Y")] == 2 and x[2, s.index("W")] == -3
  # Row sums of three rows of the NCBI matrix (20 standard columns).
  assert x[2].sum() == -16 and x[0].sum() == -32
  np.testing.assert_array_equal(featurize.blosum62("U"), featurize.blosum62("X"))
  assert featurize.blosum62("B")[0, s.index("D")] == 4


def test_bad_character_names_position():
  with pytest.raises(InputError, match=r"record 'p1', position 3: character '1'"):
    featurize.onehot("AC1", record="p1")


@pytest.mark.parametrize("kind,dim", [("onehot", 21), ("blosum62", 20)])
def test_featurize_records_writes_embedding_layout(tmp_path, kind, dim):
  out = tmp_path / f"{kind}.h5"
  n = featurize.featurize_records(kind, [("a/1", "MKT"), ("b", "GSEVIL")], out,
                                  source="x.fasta")
  assert n == 2
  attrs = eio.read_attrs(out)
  assert (attrs.model, attrs.dim, attrs.kind) == (kind, dim, "per_residue")
  got = eio.load_embeddings(out)
  assert got["a/1"].shape == (3, dim) and got["b"].shape == (6, dim)
  fn = featurize.FEATURIZERS[kind][0]
  np.testing.assert_array_equal(got["b"], fn("GSEVIL"))


def test_bad_record_leaves_nothing(tmp_path):
  out = tmp_path / "o.h5"
  with pytest.raises(InputError, match=r"in\.fa, record 'bad', position 2"):
    featurize.featurize_records("onehot", [("ok", "MK"), ("bad", "A-")], out,
                                source=str(tmp_path / "in.fa"))
  assert not out.exists() and not os.path.exists(str(out) + ".partial")
