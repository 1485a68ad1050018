"""One error type for bad user input, and the CLI wrapper that turns it into one line.

Every reader, importer and CLI raises `InputError` for problems in what the user
gave it (a file, a record, a flag). CLIs run through `cli_main`, which prints
the one-line message to stderr and exits with status 2 instead of a traceback.
"""
from __future__ import annotations

import functools
import sys
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
  """Decorates a CLI entry point: InputError -> one line on stderr, exit 2."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      code = main(*args, **kwargs)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      sys.exit(130)
    sys.exit(code or 0)

  return wrapper
