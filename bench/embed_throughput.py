"""Embedding throughput: protjax vs Hugging Face transformers' PyTorch encoder.

For any family (`--family`: ProtT5 against `T5EncoderModel`, ProtBert against
`BertModel`, ProtAlbert against `AlbertModel`), both run the same encoder weights (random, exported from protjax with
`protjax.export.export_hf`), on the same padded token batches (the embedder's
length-sorted, token-budget batches on its fixed ladder of shapes), in the same
precision, on the same host threads, interleaved repeat by repeat so a change in
machine load hits both. Each timed pass covers every batch, including the copy
of the last hidden state `[b, l, d]` back to host memory as numpy (what an
embedder must do before writing). Figures are residues/s over real residues
(padding and special tokens excluded), medians over the repeats.

Also reported: the full protjax `Embedder.embed` pipeline (tokenise, batch,
forward, strip padding, mean-pool), model FLOPs utilisation when a peak is
known (`--peak_tflops`, or a table for common GPUs), and the projected time for
the human proteome (11.3M residues).

CPU (this machine): python bench/embed_throughput.py --sample 240
                    python bench/embed_throughput.py --family protbert --config small --sample 240
GPU later:          python bench/embed_throughput.py --config xl --dtype bf16 \
                      --sample 2000 --token_budget 65536 [--no_torch]
"""
from __future__ import annotations

import argparse
import collections
import datetime
import inspect
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import numpy as np

HUMAN_PROTEOME_RESIDUES = 11.3e6
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                 "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
# Dense peak TFLOP/s per device for 16-bit matmuls (fp32: see --peak_tflops).
PEAK_TFLOPS_16BIT = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0,
                     "A10": 125.0, "V100": 125.0, "RTX 8000": 130.0}


def parse_args(argv=None):
  here = os.path.dirname(os.path.abspath(__file__))
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--fasta", default=os.path.join(here, "..", "..", "shared", "data",
                                                 "proteomes", "yeast_s288c.fasta"),
                 help="proteins to embed (default: ../shared/data/proteomes/yeast_s288c.fasta)")
  p.add_argument("--sample", type=int, default=240,
                 help="random proteins drawn from the FASTA (0: all)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--family", default="prott5", help="model family (protjax.models.registry)")
  p.add_argument("--config", default="small",
                 help="model size: gin_configs/models/<family>_<config>.gin (random weights)")
  p.add_argument("--dtype", default="fp32", choices=sorted(DTYPE_ALIASES))
  p.add_argument("--hf_dtype", choices=sorted(DTYPE_ALIASES),
                 help="transformers' precision (default: --dtype); ProtTrans' "
                      "GPU recipe runs float16")
  p.add_argument("--token_budget", type=int, help="default: protjax-embed's")
  p.add_argument("--max_length", type=int, default=4000,
                 help="proteins longer than this are dropped from the sample")
  p.add_argument("--attention_impl", default="auto", choices=("auto", "einsum", "xla"))
  p.add_argument("--hf_attention", default="sdpa", choices=("sdpa", "eager"))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--per_shape", action="store_true",
                 help="also time protjax's forward shape by shape (one more pass, "
                      "each batch waited for), to see which lengths cost most")
  p.add_argument("--no_pipeline", action="store_true",
                 help="skip timing the full Embedder.embed pipeline")
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch intra-op threads (XLA's CPU pool uses every core)")
  p.add_argument("--no_torch", action="store_true", help="protjax only")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="per-device peak for MFU (default: table for known GPUs)")
  p.add_argument("--out_dir", default=os.path.join(here, "results"))
  return p.parse_args(argv)


def sample_records(path: str, n: int, seed: int, max_length: int):
  from protjax.data.readers import read_fasta
  records = [r for r in read_fasta(path) if len(r[1]) <= max_length]
  if n and n < len(records):
    records = random.Random(seed).sample(records, n)
  return records


def make_batches(embedder, records):
  """The embedder's own plan: list of (batch arrays, real rows, long?)."""
  from protjax import embed
  tokens = [embedder.vocab.frame(s) for _, s in records]
  out = []
  for planned in embedder.batching.plan([len(t) for t in tokens]):
    batch = embed.pad_batch([[tokens[i] for i in row] for row in planned.rows],
                            planned.length, embedder.batching.batch_size(planned.length),
                            embedder.vocab)
    out.append((batch, len(planned.rows), embedder.batching.is_long(planned.length)))
  return out


def torch_inputs(batch, device, takes_positions: bool) -> dict:
  """transformers' inputs for one packed batch, so that it computes what protjax does.

  Several proteins share a row: a block-diagonal [b, 1, l, l] mask keeps each
  protein to itself (padding attends to itself only, so its rows stay finite)
  and, for absolute positions (BERT), `position_ids` restart at 0 per protein.
  T5's relative bias depends only on offsets within a protein, so it needs none.
  """
  import torch
  seg = batch["segment_ids"]
  mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
  mask |= np.eye(seg.shape[1], dtype=bool)[None]
  inputs = {"input_ids": torch.from_numpy(batch["tokens"].astype(np.int64)).to(device),
            "attention_mask": torch.from_numpy(mask[:, None]).to(device)}
  if takes_positions:
    inputs["position_ids"] = torch.from_numpy(batch["positions"].astype(np.int64)).to(device)
  return inputs


def peak_flops(args, devices) -> float | None:
  if args.peak_tflops:
    return args.peak_tflops * 1e12 * len(devices)
  kind = getattr(devices[0], "device_kind", "")
  if devices[0].platform == "gpu" and args.dtype != "fp32":
    for name, tf in PEAK_TFLOPS_16BIT.items():
      if name in kind:
        return tf * 1e12 * len(devices)
  return None


def main(argv=None) -> int:
  args = parse_args(argv)
  dtype = DTYPE_ALIASES[args.dtype]
  hf_dtype = DTYPE_ALIASES[args.hf_dtype or args.dtype]
  import jax
  import torch
  from protjax import embed, export
  from protjax.models import registry

  devices = jax.local_devices()
  torch.set_num_threads(args.threads)
  records = sample_records(args.fasta, args.sample, args.seed, args.max_length)
  residues = sum(len(s) for _, s in records)
  family = registry.get_family(args.family)
  config = family.get_config(args.config, dropout_rate=0.0)
  params = family.encoder(dataclasses_replace(config, dtype="float32")).init(
      jax.random.PRNGKey(args.seed), np.ones((1, 8), np.int32))["params"]
  params = jax.tree.map(np.asarray, params)
  emb = embed.Embedder(params, config, model_name=f"random-{args.family}-{args.config}",
                       dtype=dtype, token_budget=args.token_budget,
                       max_length=args.max_length, attention_impl=args.attention_impl)
  batches = make_batches(emb, records)
  padded = sum(b["tokens"].size for b, _, _ in batches)
  real = sum(int((b["segment_ids"][:n] > 0).sum()) for b, n, _ in batches)
  useful_flops = sum(family.module().encoder_flops(config, len(emb.vocab.frame(s)))
                     for _, s in records)
  print(f"{args.family} {args.config}: {len(records)} proteins, {residues} residues, "
        f"{len(batches)} batches, {len({b['tokens'].shape for b, _, _ in batches})} shapes, "
        f"padding {100 * (1 - real / padded):.1f}% of {padded} tokens; "
        f"{devices[0].platform} x{len(devices)}, torch threads {torch.get_num_threads()}",
        flush=True)

  # --- protjax: forward + copy to host, every batch --------------------------------
  runs = {False: emb.run_batch_fn(long=False, per_protein=False),
          True: emb.run_batch_fn(long=True, per_protein=False)}

  def protjax_pass():
    outs = []
    for batch, n, long in batches:
      hidden, _ = runs[long](batch)
      outs.append((hidden, n))
    # Host copies last: async dispatch overlaps them with later batches.
    return [np.asarray(h)[:n] for h, n in outs]

  t0 = time.perf_counter()
  jax_out = protjax_pass()   # compiles every shape
  compile_s = time.perf_counter() - t0
  if not args.no_pipeline:
    for _ in emb.embed(records):   # compiles the pipeline's (per-residue + mean) programs
      pass

  # --- transformers: same weights, same batches -------------------------------------
  hf = None
  if not args.no_torch:
    import transformers
    tdev = "cuda" if (devices[0].platform == "gpu" and torch.cuda.is_available()) else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
              "float16": torch.float16}[hf_dtype]
    tmp = tempfile.mkdtemp(prefix="embed_bench_")
    hf_dir = export.export_hf(params, config, os.path.join(tmp, "hf"), tokenizer=False)
    with open(os.path.join(hf_dir, "config.json")) as f:
      architecture = json.load(f)["architectures"][0]   # T5EncoderModel, BertModel, ...
    hf = getattr(transformers, architecture).from_pretrained(
        hf_dir, dtype=tdtype, attn_implementation=args.hf_attention).to(tdev).eval()
    takes_positions = "position_ids" in inspect.signature(hf.forward).parameters
    torch_batches = [(torch_inputs(b, tdev, takes_positions), n) for b, n, _ in batches]

    def torch_pass():
      outs = []
      with torch.inference_mode():
        for inputs, n in torch_batches:
          h = hf(**inputs).last_hidden_state
          outs.append(h[:n].float().cpu().numpy())
      return outs

    torch_out = torch_pass()   # warm-up
    # Same weights, same batches: real positions must agree.
    diff = 0.0
    scale = 0.0
    for (batch, n, _), a, b in zip(batches, jax_out, torch_out):
      mask = batch["segment_ids"][:n] > 0
      diff = max(diff, float(np.abs(a.astype(np.float32)[mask] - b[mask]).max()))
      scale = max(scale, float(np.abs(b[mask]).max()))
    print(f"max |protjax - transformers| over real positions: {diff:.2e} "
          f"(max |value| {scale:.2f})", flush=True)

  # --- timed repeats, interleaved ----------------------------------------------------
  times = {"protjax": [], "transformers": [], "protjax_pipeline": []}
  for r in range(args.repeats):
    t0 = time.perf_counter()
    protjax_pass()
    times["protjax"].append(time.perf_counter() - t0)
    if hf is not None:
      t0 = time.perf_counter()
      torch_pass()
      times["transformers"].append(time.perf_counter() - t0)
    if not args.no_pipeline:
      t0 = time.perf_counter()
      for _ in emb.embed(records, per_residue=True, per_protein=True):
        pass
      times["protjax_pipeline"].append(time.perf_counter() - t0)
    print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
        f"{k} {v[-1]:.2f} s" for k, v in times.items() if v), flush=True)

  per_shape = time_per_shape(batches, runs, args.repeats) if args.per_shape else None
  peak = peak_flops(args, devices)
  rows = {}
  for name, ts in times.items():
    if not ts:
      continue
    med = statistics.median(ts)
    rate = residues / med
    rows[name] = {
        "seconds_median": med, "seconds": ts, "residues_per_s": rate,
        "proteins_per_s": len(records) / med,
        "tflops_per_s": useful_flops / med / 1e12,
        "mfu": (useful_flops / med / peak) if peak else None,
        "human_proteome_hours": HUMAN_PROTEOME_RESIDUES / rate / 3600,
    }
  ratio = (rows["protjax"]["residues_per_s"] / rows["transformers"]["residues_per_s"]
           if "transformers" in rows else None)

  print()
  print(f"| {'implementation':<18} | {'median s':>8} | {'residues/s':>10} | "
        f"{'TFLOP/s':>7} | {'MFU':>6} | {'human proteome':>14} |")
  print(f"|{'-' * 20}|{'-' * 10}|{'-' * 12}|{'-' * 9}|{'-' * 8}|{'-' * 16}|")
  for name, row in rows.items():
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
    print(f"| {name:<18} | {row['seconds_median']:8.2f} | {row['residues_per_s']:10.0f} | "
          f"{row['tflops_per_s']:7.3f} | {mfu:>6} | {row['human_proteome_hours']:12.2f} h |")
  if per_shape:
    print(f"\n| {'shape':>11} | {'batches':>7} | {'real tokens':>11} | {'median s':>8} | "
          f"{'tokens/s':>8} | {'share':>5} |")
    print(f"|{'-' * 13}|{'-' * 9}|{'-' * 13}|{'-' * 10}|{'-' * 10}|{'-' * 7}|")
    total = sum(r["seconds_median"] for r in per_shape)
    for r in per_shape:
      print(f"| {str(tuple(r['shape'])):>11} | {r['batches']:7d} | {r['real_tokens']:11d} | "
            f"{r['seconds_median']:8.2f} | {r['real_tokens'] / r['seconds_median']:8.0f} | "
            f"{100 * r['seconds_median'] / total:4.0f}% |")
  if ratio is not None:
    print(f"\nprotjax / transformers: {ratio:.2f}x (forward + host copy, identical batches, "
          f"protjax {dtype}, transformers {hf_dtype}, medians of {args.repeats})")

  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  result = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "family": args.family, "config": args.config, "dtype": dtype,
      "hf_dtype": hf_dtype, "attention_impl": emb.config.attention_impl,
      "hf_attention": args.hf_attention, "token_budget": emb.batching.token_budget,
      "fasta": os.path.abspath(args.fasta), "sample": len(records), "seed": args.seed,
      "residues": residues, "batches": len(batches),
      "shapes": sorted({b["tokens"].shape for b, _, _ in batches}),
      "padded_tokens": padded, "useful_flops": useful_flops,
      "compile_and_first_pass_s": compile_s,
      "device": f"{devices[0].platform} {getattr(devices[0], 'device_kind', '')} "
                f"x{len(devices)}",
      "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
      "torch_threads": torch.get_num_threads(), "loadavg_end": load,
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__},
      "results": rows, "protjax_over_transformers": ratio, "per_shape": per_shape,
  }
  os.makedirs(args.out_dir, exist_ok=True)
  prefix = "" if args.family == "prott5" else f"{args.family}_"
  hf_suffix = "" if hf_dtype == dtype or args.no_torch else f"_hf_{hf_dtype}"
  name = (f"embed_throughput_{prefix}{args.config}_{dtype}{hf_suffix}_"
          f"{devices[0].platform}.json")
  with open(os.path.join(args.out_dir, name), "w") as f:
    json.dump(result, f, indent=2, default=str)
  print(f"wrote {os.path.join(args.out_dir, name)}")
  return 0


def time_per_shape(batches, runs, repeats: int) -> list[dict]:
  """protjax's forward + host copy per batch shape: medians over `repeats`
  passes, each batch waited for before the next (so no overlap between shapes)."""
  by_shape = collections.defaultdict(list)
  for batch, n, long in batches:
    by_shape[batch["tokens"].shape].append((batch, n, long))
  out = []
  for shape in sorted(by_shape, key=lambda s: (s[1], s[0])):
    group = by_shape[shape]
    seconds = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for batch, n, long in group:
        np.asarray(runs[long](batch)[0])
      seconds.append(time.perf_counter() - t0)
    out.append({"shape": list(shape), "batches": len(group),
                "real_tokens": int(sum((b["segment_ids"] > 0).sum() for b, _, _ in group)),
                "seconds": seconds, "seconds_median": statistics.median(seconds)})
  return out


def dataclasses_replace(config, **kw):
  import dataclasses
  return dataclasses.replace(config, **kw)


if __name__ == "__main__":
  sys.exit(main())
