"""HDF5 embedding layout, atomic/resumable writing, and refusal of mismatched files."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from protjax import embeddings_io as eio
from protjax.errors import InputError


def _arrays(rng, n=3, dim=4):
  return {f"sp|P{i}|X/{i}": rng.normal(size=(5 + i, dim)).astype(np.float32)
          for i in range(n)}


def test_layout_matches_contract(tmp_path):
  rng = np.random.default_rng(0)
  arrs = _arrays(rng)
  out = tmp_path / "e.h5"
  with eio.EmbeddingWriter(out, model="m", dim=4, kind="per_residue",
                           options={"dtype": "float32"}) as w:
    for k, v in arrs.items():
      w.write(k, v)
    assert not out.exists()  # only the partial file exists while writing
    assert os.path.exists(str(out) + ".partial")
  assert not os.path.exists(str(out) + ".partial")
  with h5py.File(out, "r") as f:
    assert f.attrs["model"] == "m" and int(f.attrs["dim"]) == 4
    assert f.attrs["kind"] == "per_residue"
    assert json.loads(f.attrs["options"]) == {"dtype": "float32"}
    # '/' replaced by '_' in the dataset name, original id in attr `id`.
    ds = f["sp|P1|X_1"]
    assert ds.attrs["id"] == "sp|P1|X/1"
    np.testing.assert_array_equal(ds[()], arrs["sp|P1|X/1"])
  got = eio.load_embeddings(out)
  assert list(got) == list(arrs)
  for k in arrs:
    np.testing.assert_array_equal(got[k], arrs[k])
  attrs = eio.read_attrs(out)
  assert (attrs.model, attrs.dim, attrs.kind) == ("m", 4, "per_residue")


def test_float16_kept_and_float64_stored_as_float32(tmp_path):
  out = tmp_path / "e.h5"
  with eio.EmbeddingWriter(out, model="m", dim=3, kind="per_protein") as w:
    w.write("a", np.ones(3, np.float16))
    w.write("b", np.arange(3, dtype=np.float64))
  got = eio.load_embeddings(out)
  assert got["a"].dtype == np.float16 and got["b"].dtype == np.float32
  np.testing.assert_array_equal(got["b"], [0, 1, 2])


def test_interrupted_run_resumes_and_never_leaves_a_file_at_path(tmp_path):
  rng = np.random.default_rng(1)
  arrs = _arrays(rng, n=4)
  keys = list(arrs)
  out = tmp_path / "e.h5"
  with pytest.raises(KeyboardInterrupt):
    with eio.EmbeddingWriter(out, model="m", dim=4, kind="per_residue") as w:
      w.write(keys[0], arrs[keys[0]])
      w.write(keys[1], arrs[keys[1]])
      raise KeyboardInterrupt
  assert not out.exists()
  with pytest.raises(InputError, match="did not finish"):
    eio.load_embeddings(out)
  with eio.EmbeddingWriter(out, model="m", dim=4, kind="per_residue") as w:
    assert w.done_ids() == {keys[0], keys[1]}
    for k in keys:
      if k not in w.done_ids():
        w.write(k, arrs[k])
  got = eio.load_embeddings(out)
  assert sorted(got) == sorted(keys)
  np.testing.assert_array_equal(got[keys[3]], arrs[keys[3]])


def test_untagged_dataset_from_a_crash_is_redone(tmp_path):
  out = tmp_path / "e.h5"
  with pytest.raises(RuntimeError):
    with eio.EmbeddingWriter(out, model="m", dim=2, kind="per_protein") as w:
      w.write("a", np.zeros(2))
      raise RuntimeError
  with h5py.File(str(out) + ".partial", "a") as f:
    f.create_dataset("b", data=np.zeros(2))  # no `id` attr: crashed mid-write
  with eio.EmbeddingWriter(out, model="m", dim=2, kind="per_protein") as w:
    assert w.done_ids() == {"a"}
    w.write("b", np.ones(2))
  np.testing.assert_array_equal(eio.load_embeddings(out)["b"], [1, 1])


def test_append_to_complete_file(tmp_path):
  out = tmp_path / "e.h5"
  with eio.EmbeddingWriter(out, model="m", dim=2, kind="per_protein") as w:
    w.write("a", np.zeros(2))
  with pytest.raises(RuntimeError):
    with eio.EmbeddingWriter(out, model="m", dim=2, kind="per_protein") as w:
      assert w.done_ids() == {"a"}
      w.write("b", np.ones(2))
      raise RuntimeError
  # The complete file is untouched by a failed append.
  assert list(eio.load_embeddings(out)) == ["a"]
  with eio.EmbeddingWriter(out, model="m", dim=2, kind="per_protein") as w:
    assert w.done_ids() == {"a", "b"}
    w.write("c", np.ones(2))
  assert sorted(eio.load_embeddings(out)) == ["a", "b", "c"]


@pytest.mark.parametrize("kw,needle", [
    (dict(model="m", dim=5, kind="per_residue"), "dimension 4"),
    (dict(model="other", dim=4, kind="per_residue"), "model 'm'"),
    (dict(model="m", dim=4, kind="per_protein"), "per_residue"),
])
def test_mismatched_existing_file_refused(tmp_path, kw, needle):
  out = tmp_path / "e.h5"
  with eio.EmbeddingWriter(out, model="m", dim=4, kind="per_residue") as w:
    w.write("a", np.zeros((3, 4)))
  before = out.read_bytes()
  with pytest.raises(InputError, match=needle) as e:
    with eio.EmbeddingWriter(out, **kw):
      pass
  assert str(out) in str(e.value)
  assert out.read_bytes() == before
  assert not os.path.exists(str(out) + ".partial")


def test_bad_arrays_and_ids_refused(tmp_path):
  out = tmp_path / "e.h5"
  with eio.EmbeddingWriter(out, model="m", dim=4, kind="per_residue") as w:
    with pytest.raises(InputError, match=r"record 'x'.*shape \[3, 5\]"):
      w.write("x", np.zeros((3, 5)))
    with pytest.raises(InputError, match="NaN"):
      w.write("x", np.full((3, 4), np.nan))
    w.write("a/b", np.zeros((3, 4)))
    with pytest.raises(InputError, match="same dataset name"):
      w.write("a_b", np.zeros((3, 4)))
    with pytest.raises(InputError, match="written twice"):
      w.write("a/b", np.zeros((3, 4)))


def test_reader_errors_name_file_and_record(tmp_path):
  out = tmp_path / "e.h5"
  with eio.EmbeddingWriter(out, model="m", dim=2, kind="per_protein") as w:
    w.write("a", np.zeros(2))
  with pytest.raises(InputError, match=r"e\.h5, record 'zz': no embedding"):
    eio.load_embeddings(out, ids=["a", "zz"])
  bad = tmp_path / "bad.h5"
  bad.write_text("not hdf5")
  with pytest.raises(InputError, match="bad.h5: cannot open as HDF5"):
    eio.read_attrs(bad)
  plain = tmp_path / "plain.h5"
  with h5py.File(plain, "w") as f:
    f.create_dataset("a", data=np.zeros(2))
  with pytest.raises(InputError, match="missing file attribute"):
    eio.load_embeddings(plain)
  with pytest.raises(InputError, match="no such file"):
    eio.read_attrs(tmp_path / "nope.h5")
  with pytest.raises(InputError, match="dimension 2"):
    eio.check_compatible(eio.read_attrs(out), str(out), dim=1024)
