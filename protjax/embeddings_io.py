"""HDF5 embedding files: one layout shared by `protjax-embed`, the baselines and the probes.

Layout (one file):
  * one dataset per protein at the root; dataset name = protein id with '/'
    replaced by '_' (HDF5 would read '/' as a group separator); the original id
    is kept in the dataset attribute `id`, and readers look proteins up by it.
    Two ids that map to the same name (`a/b` and `a_b`) are an InputError,
    never an overwrite: `check_ids` finds them before anything is written,
    and `EmbeddingWriter.write` refuses the second;
  * per-residue datasets are `[length, dim]` (no `</s>` row), per-protein
    datasets are `[dim]`;
  * file attributes: `model` (str), `dim` (int), `kind` ("per_residue" |
    "per_protein"), `options` (a JSON string: whatever the writer wants to record,
    e.g. precision, pooling, checkpoint).

Writing is atomic and resumable: `EmbeddingWriter` writes into `path + ".partial"`,
flushes after every protein (an interrupted run keeps every protein flushed
before the interruption), and only renames the partial file to `path` when the
`with` block ends without an exception. So `path` is either absent or complete.
Running the writer again resumes from the partial file (or, when `path` is
already complete, from a copy of it): `done_ids()` tells the caller what to
skip. A partial or complete file written for another model, dimension or kind is
refused with an `InputError` naming the file.

A path may be a URL (gs://...; `protjax.files`). h5py reads one by ranges
through a seekable stream, but writes local files only: a writer for a URL
works on a local copy in a temporary folder and uploads it when it closes,
to `path` when complete, else to `path + ".partial"`, which the next run
downloads and resumes (after an error or Ctrl-C; a run that is killed
outright leaves nothing on the URL and starts over).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Optional

import h5py
import numpy as np

from protjax import files
from protjax.errors import InputError

KINDS = ("per_residue", "per_protein")
PARTIAL_SUFFIX = ".partial"


def dataset_name(protein_id: str) -> str:
  """HDF5 dataset name of a protein id ('/' would open a group)."""
  return protein_id.replace("/", "_")


def check_ids(ids: Iterable[str], *, source: Optional[str] = None) -> None:
  """InputError naming the first id that maps to the same dataset name as an
  earlier one (`dataset_name`); `source` names the input in the message."""
  seen: dict[str, str] = {}
  for protein_id in ids:
    name = dataset_name(protein_id)
    if name in seen and seen[name] != protein_id:
      raise InputError(f"id maps to the same HDF5 dataset name {name!r} as id "
                       f"{seen[name]!r} ('/' is stored as '_'): rename one", path=source,
                       record=protein_id)
    seen.setdefault(name, protein_id)


@dataclasses.dataclass(frozen=True)
class EmbeddingAttrs:
  """The file attributes of an embedding file."""
  model: str
  dim: int
  kind: str
  options: Mapping[str, Any]


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _attrs_of(f: h5py.File, path: str) -> EmbeddingAttrs:
  missing = [k for k in ("model", "dim", "kind") if k not in f.attrs]
  if missing:
    raise InputError(f"not a protjax embedding file (missing file attribute(s) "
                     f"{', '.join(missing)})", path=path)
  options = f.attrs.get("options", "{}")
  try:
    options = json.loads(options)
  except (TypeError, ValueError):
    raise InputError("file attribute 'options' is not valid JSON", path=path)
  kind = str(f.attrs["kind"])
  if kind not in KINDS:
    raise InputError(f"file attribute kind={kind!r} is not one of {KINDS}", path=path)
  return EmbeddingAttrs(model=str(f.attrs["model"]), dim=int(f.attrs["dim"]),
                        kind=kind, options=options)


def present(path: str) -> bool:
  """Whether the file `path` exists (for a URL a file, not a prefix: ram://
  takes `x.h5` to exist where only `x.h5.partial` does)."""
  return files.isfile(path) if files.is_url(path) else os.path.exists(path)


def _open_h5(path: str, mode: str) -> h5py.File:
  try:
    if files.is_url(path):  # read by ranges (h5py writes local files only)
      if mode != "r" or not present(path):
        raise FileNotFoundError(path)
      return h5py.File(files.open_file(path, "rb"), "r")
    return h5py.File(path, mode)
  except FileNotFoundError:
    raise InputError("no such file", path=path)
  except OSError as e:
    raise InputError(f"cannot open as HDF5 ({e.__class__.__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'unreadable'})", path=path)


def read_attrs(path: str | os.PathLike) -> EmbeddingAttrs:
  """File attributes (model, dim, kind, options) of an embedding file."""
  path = os.fspath(path)
  with _open_h5(path, "r") as f:
    return _attrs_of(f, path)


def check_compatible(attrs: EmbeddingAttrs, path: str, *, model: Optional[str] = None,
                     dim: Optional[int] = None, kind: Optional[str] = None) -> None:
  """Raises InputError naming `path` when its attrs differ from what is expected."""
  if dim is not None and attrs.dim != dim:
    raise InputError(f"embeddings have dimension {attrs.dim} (model {attrs.model!r}), "
                     f"expected {dim}", path=path)
  if model is not None and attrs.model != model:
    raise InputError(f"embeddings were written by model {attrs.model!r}, "
                     f"expected {model!r}", path=path)
  if kind is not None and attrs.kind != kind:
    raise InputError(f"embeddings are {attrs.kind}, expected {kind}", path=path)


def _check_array(arr: np.ndarray, attrs: EmbeddingAttrs, path: str, record: str) -> None:
  want_ndim = 2 if attrs.kind == "per_residue" else 1
  if arr.ndim != want_ndim or arr.shape[-1] != attrs.dim:
    want = "[length, %d]" % attrs.dim if want_ndim == 2 else "[%d]" % attrs.dim
    raise InputError(f"embedding has shape {list(arr.shape)}, expected {want} "
                     f"({attrs.kind}, model {attrs.model!r})", path=path, record=record)


class EmbeddingWriter:
  """Writes an embedding file atomically and resumably.

  Usage:
    with EmbeddingWriter("out.h5", model="prott5_xl", dim=1024,
                         kind="per_residue", options={"dtype": "float16"}) as w:
      done = w.done_ids()
      for pid, emb in ...:          # skip ids in `done`
        w.write(pid, emb)           # [length, dim] or [dim]

  Args:
    path: final file; written only when the `with` block ends cleanly.
    model: name of the model (or featuriser) that produced the embeddings.
    dim: embedding dimension.
    kind: "per_residue" or "per_protein".
    options: JSON-serialisable dict stored as the `options` attribute (not
      compared on resume: a resumed run keeps the first run's options).
    dtype: storage dtype; None keeps float16/float32 arrays as they are and
      stores other dtypes as float32.
  """

  def __init__(self, path: str | os.PathLike, *, model: str, dim: int, kind: str,
               options: Optional[Mapping[str, Any]] = None,
               dtype: Optional[str | np.dtype] = None):
    _check_kind(kind)
    self.path = os.fspath(path)
    self.partial_path = self.path + PARTIAL_SUFFIX
    # The file h5py writes: `partial_path`, or for a URL a local working copy
    # (made by `open`, uploaded by `close`).
    self._work_path = self.partial_path
    self._work_dir: Optional[str] = None
    self.attrs = EmbeddingAttrs(model=str(model), dim=int(dim), kind=kind,
                                options=dict(options or {}))
    self._options_json = json.dumps(self.attrs.options, sort_keys=True)
    self.dtype = None if dtype is None else np.dtype(dtype)
    self._file: Optional[h5py.File] = None
    self._done: dict[str, str] = {}  # dataset name -> original id

  # --- lifecycle -------------------------------------------------------------
  def open(self) -> "EmbeddingWriter":
    if self._file is not None:
      return self
    parent = files.parent_of(self.path)
    if not files.isdir(parent):
      raise InputError("output folder does not exist", path=parent)
    if present(self.partial_path):
      source = self.partial_path  # resume an interrupted run
    elif present(self.path):
      source = self.path  # append to a complete file: work on a copy
    else:
      source = None
    if source is not None:
      # Check the existing file before touching anything.
      with _open_h5(source, "r") as f:
        check_compatible(_attrs_of(f, source), source, model=self.attrs.model,
                         dim=self.attrs.dim, kind=self.attrs.kind)
    if files.is_url(self.path):
      self._work_dir = tempfile.mkdtemp(prefix="protjax-h5-")
      self._work_path = os.path.join(self._work_dir, "embeddings.h5" + PARTIAL_SUFFIX)
      if source is not None:
        files.copy_file(source, self._work_path)
    elif source == self.path:
      tmp = self.partial_path + ".copy"
      shutil.copyfile(self.path, tmp)
      os.replace(tmp, self.partial_path)
    if source is not None:
      self._file = _open_h5(self._work_path, "a")
      self._load_done()
    else:
      self._file = h5py.File(self._work_path, "w")
      self._file.attrs["model"] = self.attrs.model
      self._file.attrs["dim"] = self.attrs.dim
      self._file.attrs["kind"] = self.attrs.kind
      self._file.attrs["options"] = self._options_json
      self._file.flush()
    return self

  def _load_done(self) -> None:
    f = self._file
    for name in list(f.keys()):
      obj = f[name]
      if not isinstance(obj, h5py.Dataset) or "id" not in obj.attrs:
        # Interrupted between creating the dataset and tagging it: redo it.
        del f[name]
        continue
      self._done[name] = str(obj.attrs["id"])
    f.flush()

  def close(self, *, complete: bool = True) -> None:
    """Closes the partial file; renames it to `path` when `complete`.

    For a URL: uploads the working copy to `path` (then deletes the URL's
    `.partial`) when `complete`, else to `path + ".partial"` for a rerun."""
    if self._file is None:
      return
    self._file.flush()
    self._file.close()
    self._file = None
    if self._work_dir is None:
      if complete:
        os.replace(self.partial_path, self.path)
      return
    try:
      files.copy_file(self._work_path, self.path if complete else self.partial_path)
      if complete:
        files.remove(self.partial_path)
    finally:
      shutil.rmtree(self._work_dir, ignore_errors=True)
      self._work_dir = None

  def discard(self) -> None:
    """Closes and deletes the partial file (for bad input: nothing is left)."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._work_dir is not None:
      shutil.rmtree(self._work_dir, ignore_errors=True)
      self._work_dir = None
    files.remove(self.partial_path)

  def __enter__(self) -> "EmbeddingWriter":
    return self.open()

  def __exit__(self, exc_type, exc, tb) -> None:
    # On an exception the partial file stays (flushed) for a resumed run.
    self.close(complete=exc_type is None)

  # --- writing -----------------------------------------------------------------
  def done_ids(self) -> set[str]:
    """Ids already written (by this run or by the run being resumed)."""
    return set(self._done.values())

  def __contains__(self, protein_id: str) -> bool:
    return self._done.get(dataset_name(protein_id)) == protein_id

  def __len__(self) -> int:
    return len(self._done)

  def write(self, protein_id: str, array: np.ndarray) -> None:
    """Writes one protein and flushes; `[length, dim]` or `[dim]` by kind."""
    if self._file is None:
      raise RuntimeError("EmbeddingWriter is not open (use it as a context manager)")
    protein_id = str(protein_id)
    if not protein_id:
      raise InputError("empty protein id", path=self.path)
    name = dataset_name(protein_id)
    if name in self._done:
      other = self._done[name]
      raise InputError(
          "protein written twice" if other == protein_id else
          f"id maps to the same dataset name {name!r} as id {other!r}",
          path=self.path, record=protein_id)
    arr = np.asarray(array)
    _check_array(arr, self.attrs, self.path, protein_id)
    if not np.all(np.isfinite(arr)):
      raise InputError("embedding contains NaN or infinity", path=self.path,
                       record=protein_id)
    dtype = self.dtype
    if dtype is None:
      dtype = arr.dtype if arr.dtype in (np.float16, np.float32) else np.dtype(np.float32)
    ds = self._file.create_dataset(name, data=arr.astype(dtype, copy=False))
    ds.attrs["id"] = protein_id  # tagged last: untagged datasets are redone on resume
    self._file.flush()
    self._done[name] = protein_id


# --- reading -------------------------------------------------------------------
class EmbeddingFile:
  """Read access to an embedding file: `attrs`, `ids()`, `[id]`, `in`.

  Use as a context manager (or call `close()`).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if not present(self.path) and present(self.path + PARTIAL_SUFFIX):
      raise InputError(f"no such file (but {self.path + PARTIAL_SUFFIX} exists: "
                       "the run that writes it did not finish)", path=self.path)
    self._file = _open_h5(self.path, "r")
    try:
      self.attrs = _attrs_of(self._file, self.path)
    except InputError:
      self._file.close()
      raise
    self._names: dict[str, str] = {}  # original id -> dataset name
    for name, obj in self._file.items():
      if isinstance(obj, h5py.Dataset):
        self._names[str(obj.attrs.get("id", name))] = name

  def ids(self) -> list[str]:
    return list(self._names)

  def __len__(self) -> int:
    return len(self._names)

  def __contains__(self, protein_id: str) -> bool:
    return protein_id in self._names

  def __getitem__(self, protein_id: str) -> np.ndarray:
    name = self._names.get(protein_id)
    if name is None:
      raise InputError("no embedding for this id", path=self.path, record=protein_id)
    arr = self._file[name][()]
    _check_array(arr, self.attrs, self.path, protein_id)
    return arr

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "EmbeddingFile":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_embeddings(path: str | os.PathLike, ids: Optional[Iterable[str]] = None
                    ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (id, array) in file order, or in the order of `ids`.

  A requested id that is not in the file raises InputError naming the file and
  the record (checked before anything is yielded).
  """
  with EmbeddingFile(path) as ef:
    if ids is None:
      ids = ef.ids()
    else:
      ids = list(ids)
      for pid in ids:
        if pid not in ef:
          raise InputError("no embedding for this id", path=ef.path, record=pid)
    for pid in ids:
      yield pid, ef[pid]


def load_embeddings(path: str | os.PathLike, ids: Optional[Iterable[str]] = None
                    ) -> dict[str, np.ndarray]:
  """All embeddings (or those of `ids`) as a dict id -> array."""
  return dict(read_embeddings(path, ids))
