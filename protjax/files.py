"""Atomic writes: a reader never sees a half-written report, config, cache or folder.

The text files protjax and bench/ write (reports, JSON caches, run configs)
go through `write_text_atomic`, so an interrupted run leaves either the old
file or the new one, never a torn one; output folders (probes, exports) are
built in a temporary sibling and renamed into place (`atomic_directory`).

Both honour the umask, as `open` and `mkdir` do: `tempfile.mkstemp` and
`mkdtemp` create 0600 files and 0700 folders, and a rename would make those
the output's permissions (`default_mode`, `make_temp_dir`).

One filesystem layer for paths that may be URLs: on TPU VMs the corpus and the
model directory live in Cloud Storage (`gs://bucket/...`). `exists`, `isdir`,
`isfile`, `glob`, `makedirs`, `rmtree`, `join` and `open_file` take local
paths (plain `os`, no TensorFlow) or URLs (`tf.io.gfile`, which knows gs://,
s3:// with its plugin, and the in-memory `ram://` the tests use). A URL is
written in place: a Cloud Storage object appears whole when it is closed.

Folders on a URL: an object store has no rename, so `atomic_directory` on a
URL builds the folder locally (under TMPDIR) and uploads it when complete,
the files named in `last` (a format's config.json, which every reader looks
for first) after all the others: a reader never takes a partial upload for a
model. `local_copy` is the other way: a folder on a URL downloaded for
readers that need local files (safetensors, h5py, orbax on ram://).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import glob as glob_lib
import io
from typing import IO, Iterator, Sequence

from protjax.errors import InputError


def default_mode(directory: bool = False) -> int:
  """The permissions `open` (0666) or `mkdir` (0777) would give a new file
  or folder under the current umask."""
  umask = os.umask(0)  # reading the umask means setting it: set it back at once
  os.umask(umask)
  return (0o777 if directory else 0o666) & ~umask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> str:
  """A fresh, uniquely named folder in `parent` with `mkdir`'s permissions
  (tempfile.mkdtemp alone gives 0700)."""
  tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
  os.chmod(tmp, default_mode(directory=True))
  return tmp


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False,
                     last: Sequence[str] = ()) -> Iterator[str]:
  """Yields a fresh temporary sibling of `directory`; renamed to it on success.

  The folder gets `mkdir`'s permissions (0777 less the umask). On an
  exception the temporary folder is removed and `directory` is left as it
  was. With `overwrite=True` an existing `directory` is replaced (moved aside
  first, deleted once the new one is in place); otherwise it is an
  InputError, raised before anything is written.

  A URL `directory` (gs://...) is built in a local temporary folder and
  uploaded on success (`_upload_directory`), the files named in `last` last.
  """
  if is_url(directory):
    with _upload_directory(os.fspath(directory).rstrip("/"), overwrite, last) as tmp:
      yield tmp
    return
  directory = os.path.abspath(os.fspath(directory))
  if os.path.lexists(directory) and not overwrite:
    raise InputError("output directory exists (pass overwrite=True / --overwrite to replace it)",
                     path=directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = make_temp_dir(parent, os.path.basename(directory) + ".tmp-")
  try:
    yield tmp
    old = None
    if os.path.lexists(directory):
      old = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".old-", dir=parent)
      os.rmdir(old)
      os.rename(directory, old)
    os.rename(tmp, directory)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


@contextlib.contextmanager
def _upload_directory(url: str, overwrite: bool, last: Sequence[str]) -> Iterator[str]:
  """`atomic_directory` for a URL: a local folder, uploaded when the block ends.

  An object store can neither rename a folder nor show several objects at
  once (gs:// "renames" copy object by object), so the upload goes straight
  to `url` with the files named in `last` written after all the others:
  whenever a reader that requires them (config.json, for protjax's exports
  and probes) finds them, everything else is already there. An upload that fails is removed; one killed
  midway leaves a folder without its `last` files, which loaders refuse as
  "not a model" and a rerun replaces with `overwrite`. With `overwrite` an
  existing `url` is removed (its `last` files first) once the local folder
  is complete, before the upload.
  """
  if exists(url) and not overwrite:
    raise InputError("output directory exists (pass overwrite=True / --overwrite to replace "
                     "it)", path=url)
  tmp = tempfile.mkdtemp(prefix="protjax-upload-")
  try:
    yield tmp
    if exists(url):
      for name in last:
        remove(join(url, name))
      rmtree(url)
    try:
      copy_tree(tmp, url, last=last)
    except BaseException:
      with contextlib.suppress(Exception):
        rmtree(url)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, *,
              last: Sequence[str] = ()) -> None:
  """Copies every file under folder `src` into `dst` (each side local or a
  URL), making folders as needed; the files named in `last` (paths relative
  to `src`) are copied after all the others."""
  src, dst = os.fspath(src), os.fspath(dst)
  src = src.rstrip("/") if is_url(src) else src
  walk = _gfile().walk(src) if is_url(src) else os.walk(src)
  names = []
  for folder, _, filenames in walk:
    rel = os.path.relpath(folder, src) if not is_url(src) else folder[len(src):].strip("/")
    names += [f"{rel}/{f}" if rel not in ("", ".") else f for f in filenames]
  names = sorted(n for n in names if n not in last) + [n for n in last if n in names]
  for name in names:
    target = join(dst, *name.split("/"))
    makedirs(parent_of(target))
    copy_file(join(src, *name.split("/")), target)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copies one file (either side local or a URL), replacing `dst`.

  Streamed through `open_file` (not tf.io.gfile.copy, which on ram:// skips
  a destination that a longer name starts with: `x.h5` beside `x.h5.partial`)."""
  if not (is_url(src) or is_url(dst)):
    shutil.copyfile(src, dst)
    return
  with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
    shutil.copyfileobj(fin, fout, 16 << 20)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
  """A local folder holding folder `path`'s files: `path` itself when local;
  for a URL a download into a temporary folder, removed when the block ends.
  An InputError raised inside that names the temporary folder names `path`
  instead, so a message points at what the user gave."""
  path = os.fspath(path)
  if not is_url(path):
    yield path
    return
  tmp = tempfile.mkdtemp(prefix="protjax-download-")
  try:
    copy_tree(path, tmp)
    try:
      yield tmp
    except InputError as e:
      if e.path is None or not os.fspath(e.path).startswith(tmp):
        raise
      raise InputError(e.problem, path=path.rstrip("/") + os.fspath(e.path)[len(tmp):],
                       record=e.record, position=e.position) from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def is_url(path: str | os.PathLike) -> bool:
  """`gs://bucket/x` and the like: a path for `tf.io.gfile`, not for `os`."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """An absolute local path, or the URL as given."""
  return os.fspath(path) if is_url(path) else os.path.abspath(path)


def parent_of(path: str | os.PathLike) -> str:
  """The folder holding `path` (os.path.dirname for URLs too, absolute locally)."""
  path = os.fspath(path).rstrip("/") if is_url(path) else os.path.abspath(path)
  return path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def _gfile():
  from protjax import tf_setup  # pylint: disable=import-outside-toplevel
  tf_setup.import_tensorflow()
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError("paths with a scheme (gs://...) are read through TensorFlow's "
                     "tf.io.gfile: install tensorflow") from None
  return tf.io.gfile


def join(path: str | os.PathLike, *parts: str) -> str:
  """os.path.join for local paths and URLs alike (pathlib would turn
  `gs://b` into `gs:/b`)."""
  path = os.fspath(path)
  if is_url(path):
    return "/".join([path.rstrip("/"), *parts])
  return os.path.join(path, *parts)


def exists(path: str | os.PathLike) -> bool:
  return _gfile().exists(os.fspath(path)) if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  return _gfile().isdir(os.fspath(path)) if is_url(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
  if is_url(path):
    return exists(path) and not isdir(path)
  return os.path.isfile(path)


def glob(pattern: str | os.PathLike) -> list[str]:
  """Paths matching a glob (`*`, `?`, `[...]`), sorted."""
  pattern = os.fspath(pattern)
  return sorted(_gfile().glob(pattern) if is_url(pattern) else glob_lib.glob(pattern))


def listdir(path: str | os.PathLike) -> list[str]:
  """The names in a folder (hidden ones included, as os.listdir)."""
  return _gfile().listdir(os.fspath(path)) if is_url(path) else os.listdir(path)


def makedirs(path: str | os.PathLike) -> None:
  """The folder and its parents (nothing to do where it exists)."""
  if is_url(path):
    _gfile().makedirs(os.fspath(path))
  else:
    os.makedirs(path, exist_ok=True)


def remove(path: str | os.PathLike) -> None:
  """Deletes a file if it exists."""
  if is_url(path):
    if exists(path):
      _gfile().remove(os.fspath(path))
  elif os.path.lexists(path):
    os.remove(path)


def rmtree(path: str | os.PathLike) -> None:
  """Removes a folder and everything in it, if it exists."""
  if is_url(path):
    if exists(path):
      _gfile().rmtree(os.fspath(path))
  else:
    shutil.rmtree(path, ignore_errors=True)


class _GFileReader(io.RawIOBase):
  """A tf.io.gfile.GFile as a raw binary stream: GFile has no `readable`/
  `readinto`, which io.BufferedReader, TextIOWrapper and gzip need; seekable,
  so h5py reads an HDF5 file on a URL by ranges without downloading it."""

  def __init__(self, gfile, name: str):
    super().__init__()
    self._gfile, self.name = gfile, name

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    data = self._gfile.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  def seekable(self) -> bool:
    return True

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    base = {io.SEEK_SET: 0, io.SEEK_CUR: self._gfile.tell(), io.SEEK_END: self._gfile.size()}
    self._gfile.seek(base[whence] + offset)
    return self._gfile.tell()

  def tell(self) -> int:
    return self._gfile.tell()

  def close(self) -> None:
    if not self.closed:
      self._gfile.close()
    super().close()


def open_file(path: str | os.PathLike, mode: str = "rb") -> IO:
  """`open` for local paths and URLs ("r", "rb", "w", "wb", "a", "ab"; a
  URL read in "rb" is a buffered binary stream, as `open` gives)."""
  if not is_url(path):
    return open(path, mode)  # pylint: disable=consider-using-with,unspecified-encoding
  path = os.fspath(path)
  gfile = _gfile().GFile(path, mode)
  return io.BufferedReader(_GFileReader(gfile, path)) if mode == "rb" else gfile


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temp file in the same folder and a rename.

  The temp name is unique (two writers never share one), the result gets the
  usual permissions (0666 less the umask; mkstemp alone would give 0600), and
  the temp file is removed if anything fails. The folder must exist. A URL
  is written in place (an object store shows an object once it is closed).
  """
  if is_url(path):
    if not isdir(parent_of(path)):
      raise InputError("output folder does not exist", path=parent_of(path))
    with open_file(path, "w") as f:
      f.write(text)
    return
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise InputError("output folder does not exist", path=parent)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
