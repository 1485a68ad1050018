"""One error type for bad user input, and the CLI wrapper that turns it into one line.

Every reader, importer and CLI raises `InputError` for problems in what the user
gave it (a file, a record, a flag). CLIs run through `cli_main`, which prints
the one-line message to stderr and exits with status 2 instead of a traceback.
"""
from __future__ import annotations

import functools
import gc
import sys
import traceback
from typing import Callable, Optional


class InputError(ValueError):
  """Bad user input: the message names the file, the record and the problem."""

  def __init__(self, problem: str, *, path: Optional[str] = None,
               record: Optional[str] = None, position: Optional[int] = None):
    self.problem = problem
    self.path = path
    self.record = record
    self.position = position
    where = []
    if path is not None:
      where.append(str(path))
    if record is not None:
      where.append(f"record {record!r}")
    if position is not None:
      where.append(f"position {position}")
    super().__init__((": ".join([", ".join(where), problem]) if where else problem))


def cli_main(main: Callable[..., int | None]) -> Callable[..., int]:
  """Decorates a CLI entry point: InputError -> one line on stderr, exit 2.

  Whatever the outcome, what the run held is released before the interpreter
  shuts down (see `_exit`).
  """

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      code = main(*args, **kwargs)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      code = 2
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      code = 130
    except Exception:  # a bug: its traceback, as Python would print it
      traceback.print_exc()
      code = 1
    _exit(code or 0)

  return wrapper


def _exit(code: int) -> None:
  """Exits with `code`; after a failure, once the failed run's objects are gone.

  Outside the except clauses, the exception and the frames its traceback
  holds are unreferenced; collecting them now destroys, among them, a
  tf.data iterator while the interpreter is whole. Left to interpreter
  shutdown, that iterator's threads (still running a Python generator)
  could no longer take the GIL, and its destructor would wait for them
  forever: `protjax-data` hung after printing its error. A run that
  returned normally has let go of its iterators with its frames; the
  collection (most of a second with TensorFlow loaded) is skipped then.
  """
  if code:
    gc.collect()
  sys.exit(code)
