"""Atomic writes: a reader never sees a half-written report, config, cache or folder.

The text files protjax and bench/ write (reports, JSON caches, run configs)
go through `write_text_atomic`, so an interrupted run leaves either the old
file or the new one, never a torn one; output folders (probes, exports) are
built in a temporary sibling and renamed into place (`atomic_directory`).

Both honour the umask, as `open` and `mkdir` do: `tempfile.mkstemp` and
`mkdtemp` create 0600 files and 0700 folders, and a rename would make those
the output's permissions (`default_mode`, `make_temp_dir`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

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
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
  """Yields a fresh temporary sibling of `directory`; renamed to it on success.

  The folder gets `mkdir`'s permissions (0777 less the umask). On an
  exception the temporary folder is removed and `directory` is left as it
  was. With `overwrite=True` an existing `directory` is replaced (moved aside
  first, deleted once the new one is in place); otherwise it is an
  InputError, raised before anything is written.
  """
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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temp file in the same folder and a rename.

  The temp name is unique (two writers never share one), the result gets the
  usual permissions (0666 less the umask; mkstemp alone would give 0600), and
  the temp file is removed if anything fails. The folder must exist.
  """
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
