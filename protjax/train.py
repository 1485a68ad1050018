"""`protjax-train` / `python -m protjax.train`: flags in, `trainer.train` out.

  protjax-train --gin_file=gin_configs/runs/demo.gin \\
      --gin.train.model_dir="'runs/demo'" --gin.train.train_steps=200

`--gin_file` may repeat (later files override earlier ones); every
`--gin.BINDING=value` is one gin binding applied after the files, t5x-style.
Gin file paths and their `include`s resolve against the current directory
and the protjax checkout / install (so `gin_configs/...` works anywhere).
Multi-host: `--coordinator_address/--num_processes/--process_id` (GPU
clusters), or nothing on TPU VM pods / SLURM (jax detects them).

Exit status: 0 when the run reached `train.train_steps`; 75
(`EXIT_STOPPED_EARLY`) when SIGTERM or `train.max_minutes` stopped it
earlier, after saving a checkpoint (rerun the same command to resume), so
`protjax-train ... && protjax-export ...` never exports a half-trained
model; 2 for bad input (one `error:` line; a bad gin value is caught before
anything is written).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tokenize
from typing import Optional, Sequence

from protjax.errors import InputError, cli_main

GIN_PREFIX = "--gin."
# A run stopped before train_steps with a checkpoint saved: resumable.
# EX_TEMPFAIL of sysexits.h ("temporary failure: try again").
EXIT_STOPPED_EARLY = 75


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """argv -> (gin bindings from `--gin.X=Y` / `--gin.X Y`, the other flags)."""
  bindings, rest = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(GIN_PREFIX):
      binding = arg[len(GIN_PREFIX):]
      if "=" not in binding:  # `--gin.X value`
        if i + 1 >= len(argv):
          raise InputError(f"flag {arg} needs a value (--gin.NAME=VALUE)")
        binding = f"{binding}={argv[i + 1]}"
        i += 1
      bindings.append(binding)
    else:
      rest.append(arg)
    i += 1
  return bindings, rest


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  """Parses argv (without the program name); `--gin.X=Y` become bindings."""
  parser = argparse.ArgumentParser(
      prog="protjax-train", description=__doc__.split("\n\n")[0],
      epilog="--gin.NAME=VALUE   one gin binding (repeatable), applied "
      "after the gin files, e.g. --gin.train.train_steps=1000",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable)")
  parser.add_argument("--gin_search_path", action="append", default=[],
                      help="extra directory to resolve gin files against")
  parser.add_argument("--coordinator_address", default=None,
                      help="host:port of process 0 (multi-node GPU)")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  bindings, rest = split_gin_flags(argv)
  args = parser.parse_args(rest)
  if not args.gin_file:
    raise InputError("give at least one --gin_file (e.g. "
                     "gin_configs/runs/demo.gin)")
  args.gin_bindings = bindings
  return args


def _search_paths(extra: Sequence[str]) -> list[str]:
  """Where relative gin paths resolve: the current directory, `extra`, and
  the directory holding `gin_configs/` (the checkout, or site-packages)."""
  return [str(pathlib.Path.cwd()), *extra, str(pathlib.Path(__file__).resolve().parents[1])]


def _parse_config(args: argparse.Namespace) -> None:
  """Parses the gin files and bindings; InputError naming the binding or
  file for anything gin cannot parse or whose type is wrong."""
  import gin  # pylint: disable=import-outside-toplevel

  from protjax import gin_setup  # pylint: disable=import-outside-toplevel

  for path in _search_paths(args.gin_search_path):
    gin.add_config_file_search_path(path)
  try:
    gin_setup.parse_gin(args.gin_file, args.gin_bindings)
  except (IOError, ValueError, SyntaxError, tokenize.TokenError) as e:
    where = "; ".join(l.strip() for l in str(e).splitlines() if l.strip())
    if isinstance(e, SyntaxError) and e.filename:
      where = f"{e.filename}, line {e.lineno}: {where}"
    raise InputError(f"gin configuration: {where}") from None
  gin_setup.check_types()


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  # Import after flag parsing: `--help` and flag errors stay fast.
  from protjax import gin_setup, tf_setup  # pylint: disable=import-outside-toplevel
  for binding in args.gin_bindings:
    gin_setup.check_binding(binding)
  tf_setup.import_tensorflow()  # before anything imports it (the data pipeline)
  import gin  # pylint: disable=import-outside-toplevel

  from protjax import trainer  # pylint: disable=import-outside-toplevel

  trainer.initialize_distributed(args.coordinator_address, args.num_processes,
                                 args.process_id)
  _parse_config(args)
  try:
    result = gin.get_configurable(trainer.train)(config_str=gin.config_str())
  except InputError as e:
    # Gin appends "In call to configurable 'train' (...)" on a second line.
    raise InputError(e.problem, path=e.path, record=e.record,
                     position=e.position) from None
  return 0 if result.stopped is None else EXIT_STOPPED_EARLY


if __name__ == "__main__":
  main()
