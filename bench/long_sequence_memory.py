"""Peak memory of a family's encoder on long proteins: blockwise vs full attention.

For each length and attention implementation this reports

* `analysed`: XLA's compiled memory analysis of the jitted encoder forward
  (arguments + outputs + temporaries, without running it), and
* `measured` (with `--run-max-length`): the peak actually reached when the
  forward runs, in a fresh subprocess per case so peaks do not mix: the
  device's `peak_bytes_in_use` on GPU/TPU, the process's peak RSS on CPU
  (which also counts the Python/JAX runtime: compare rows with each other).

"full" is the reference einsum attention (materialises `[heads, q, k]`);
"blockwise" is `attention_impl="blockwise"`. Full attention at 35k residues
needs tens of GiB, so by default it is only analysed.

`--family` (default prott5) picks any registered family's encoder and size
(`--config`). ProtTXL reads a protein segment by segment with its memory
whatever `--impls` says (its attention is bounded by segment and memory
length), so give it one impl:

  python bench/long_sequence_memory.py --family prottxl --config small --impls full \
      --run-full-max-length 35000

  python bench/long_sequence_memory.py --json bench/results/long_sequence_memory.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

IMPLS = {"full": "einsum", "blockwise": "blockwise"}


def _setup(config_name: str, impl: str, length: int, block_size: int, family: str = "prott5"):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from protjax.models import registry

  fam = registry.get_family(family)
  cfg = fam.get_config(config_name)
  fields = {f.name for f in dataclasses.fields(cfg)}
  cfg = dataclasses.replace(cfg, attention_impl=IMPLS[impl], dropout_rate=0.0, **(
      {"attention_block_size": block_size} if "attention_block_size" in fields else {}))
  module = fam.encoder(cfg)
  vocab = fam.vocabulary()
  residues = np.random.RandomState(0).choice(list("ACDEFGHIKLMNPQRSTVWY"),
                                             length - len(vocab.frame("")))
  tokens = np.asarray([vocab.frame("".join(residues))], np.int32)  # [1, length]
  params_shape = jax.eval_shape(
      lambda r: module.init(r, jnp.ones((1, 8), jnp.int32))["params"], jax.random.PRNGKey(0))
  fn = jax.jit(lambda p, t: module.apply({"params": p}, t))
  return cfg, module, tokens, params_shape, fn


def analyse(config_name: str, impl: str, length: int, block_size: int,
            family: str = "prott5") -> dict:
  """Compiled memory analysis (no execution, no weights allocated)."""
  import jax
  import jax.numpy as jnp
  cfg, _, tokens, params_shape, fn = _setup(config_name, impl, length, block_size, family)
  t0 = time.time()
  compiled = fn.lower(params_shape, jax.ShapeDtypeStruct(tokens.shape, tokens.dtype)).compile()
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  return {"analysed_bytes": int(peak), "temp_bytes": int(mem.temp_size_in_bytes),
          "argument_bytes": int(mem.argument_size_in_bytes),
          "compile_s": round(time.time() - t0, 2), "dtype": str(jnp.dtype(cfg.compute_dtype))}


def measure(config_name: str, impl: str, length: int, block_size: int,
            family: str = "prott5") -> dict:
  """Runs the forward once (after a warm-up compile) and reports the peak memory."""
  import jax
  import jax.numpy as jnp
  _, module, tokens, _, fn = _setup(config_name, impl, length, block_size, family)
  params = jax.jit(lambda r: module.init(r, jnp.ones((1, 8), jnp.int32))["params"])(
      jax.random.PRNGKey(0))
  compiled = fn.lower(params, tokens).compile()
  device = jax.devices()[0]
  t0 = time.time()
  out = compiled(params, tokens)
  out.block_until_ready()
  seconds = time.time() - t0
  result = {"run_s": round(seconds, 2), "finite": bool(jnp.all(jnp.isfinite(out)))}
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    result["measured_bytes"] = int(stats["peak_bytes_in_use"])
    result["measured_kind"] = "device peak_bytes_in_use"
  else:
    # ru_maxrss is KiB on Linux.
    result["measured_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    result["measured_kind"] = "process peak RSS"
  return result


def _measure_in_subprocess(args, impl: str, length: int) -> dict:
  cmd = [sys.executable, __file__, "--single", impl, str(length), "--config", args.config,
         "--block-size", str(args.block_size), "--family", args.family]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(x):
  return "-" if x is None else f"{x / 2**30:.3f}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--family", default="prott5", help="any registered model family")
  parser.add_argument("--config", default="small", help="the family's size name")
  parser.add_argument("--lengths", default="2048,8192,35000")
  parser.add_argument("--impls", default="blockwise,full")
  parser.add_argument("--block-size", type=int, default=512)
  parser.add_argument("--run-max-length", type=int, default=8192,
                      help="run (and measure) blockwise cases up to this length; "
                           "full attention is run up to --run-full-max-length")
  parser.add_argument("--run-full-max-length", type=int, default=8192)
  parser.add_argument("--json", default=None, help="write the results here (atomically)")
  parser.add_argument("--single", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.single:
    print(json.dumps(measure(args.config, args.single[0], int(args.single[1]), args.block_size,
                             args.family)))
    return 0

  import jax
  lengths = [int(x) for x in args.lengths.split(",")]
  impls = args.impls.split(",")
  rows = []
  for length in lengths:
    for impl in impls:
      row = {"family": args.family, "config": args.config, "impl": impl, "length": length,
             "block_size": args.block_size}
      row.update(analyse(args.config, impl, length, args.block_size, args.family))
      limit = args.run_max_length if impl == "blockwise" else args.run_full_max_length
      if length <= limit:
        row.update(_measure_in_subprocess(args, impl, length))
      rows.append(row)
      print(f"{impl:>9} {length:>6}: analysed {_gib(row['analysed_bytes'])} GiB, "
            f"measured {_gib(row.get('measured_bytes'))} GiB, run {row.get('run_s', '-')} s",
            file=sys.stderr, flush=True)

  device = jax.devices()[0]
  header = f"{'length':>7} {'impl':>9} {'analysed GiB':>13} {'measured GiB':>13} {'run s':>7}"
  print(f"{args.family}-{args.config} encoder forward, batch 1, device {device.device_kind} "
        f"({device.platform}), block {args.block_size}")
  print(header)
  for r in rows:
    print(f"{r['length']:>7} {r['impl']:>9} {_gib(r['analysed_bytes']):>13} "
          f"{_gib(r.get('measured_bytes')):>13} {r.get('run_s', '-'):>7}")
  if args.json:
    out = {"device": device.device_kind, "platform": device.platform, "rows": rows}
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    from protjax.files import write_text_atomic  # pylint: disable=import-outside-toplevel
    write_text_atomic(path, json.dumps(out, indent=2))
  return 0


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  sys.exit(main())
