"""TensorFlow, quietly: a run that works prints protjax's lines, not TF's.

Only the data pipeline uses TensorFlow (tf.data, on the CPU). Importing it
prints, once per shared library that carries TF (twice), absl's "All log
messages before absl::InitializeLog() ...", oneDNN's notice and "Could not
find cuda drivers": C++ info lines written to file descriptor 2 before any
setting can turn them down. Later, TF's C++ logs add "failed call to cuInit",
oneDNN notes and the warnings tf.data logs while it tears down a generator
(a Python traceback among them).

`import_tensorflow` imports TF with descriptor 2 captured and passes on
everything but those start-up info and warning lines, and sets
TF_CPP_MIN_LOG_LEVEL=3 (TF's later C++ logs: off; an error still reaches the
user as a Python exception) unless the environment already sets it.
Entry points that use TF call it before anything imports TF.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# absl / TF C++ log lines of severity I(nfo) or W(arning):
# "I0000 00:00:1795985325.439923   22590 port.cc:153] ...".
_INFO_OR_WARNING = re.compile(r"^[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.-]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# The continuation line of cpu_feature_guard's info line.
_CPU_FEATURES = "To enable the following instructions:"


def is_startup_noise(line: str) -> bool:
  """Whether `line` is one of TF's C++ start-up info or warning lines."""
  return bool(_INFO_OR_WARNING.match(line) or line.startswith(_ABSL_PREAMBLE)
              or line.startswith(_CPU_FEATURES))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
  """Runs the block with file descriptor 2 going to a temporary file, then
  writes what it got, less `is_startup_noise` lines, to stderr."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode("utf-8", "replace")
      kept = [l for l in text.splitlines(keepends=True) if not is_startup_noise(l)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def import_tensorflow() -> None:
  """Imports TensorFlow (and seqio) quietly, if installed; see the module doc."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if "tensorflow" in sys.modules:
    return
  with filtered_stderr():
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      import seqio  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:  # the NumPy backend runs without them
      pass
