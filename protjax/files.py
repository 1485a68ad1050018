"""Atomic file writes: a reader never sees a half-written report, config or cache.

The text files protjax and bench/ write (reports, JSON caches, run configs)
go through `write_text_atomic`, so an interrupted run leaves either the old
file or the new one, never a torn one.
"""
from __future__ import annotations

import os
import tempfile

from protjax.errors import InputError


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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
