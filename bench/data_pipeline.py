"""Data-pipeline benchmark: masked 512-residue examples per second from FASTA.

  python bench/data_pipeline.py [FASTA_OR_DIR ...] [--length 512] [--batch_size 64]
      [--seconds 20] [--objectives t5 bert] [--pack] [--out bench/results/data_pipeline.json]

What is timed: `protjax.data.pipeline.get_dataset` exactly as the trainer
uses it (train split, shuffled, repeating, numpy batches on the host), from
the given FASTA files (default: every FASTA under ../shared/data/pretraining),
after a warm-up of `--warmup` batches (the first batch waits for the record
shuffle buffer to fill). For each configuration it counts batches for about
`--seconds` seconds and reports:
- examples/s: examples of `--length` tokens (padded or packed rows);
- residues/s: real residue tokens per second (padding, `</s>`, [CLS]/[SEP]
  excluded), which is what packing improves;
- masked fraction of residues (a sanity check: ~0.15 for t5/bert; for bert
  the selected positions, incl. the 10% kept and 10% random ones).
`--resume_steps`: seconds from building a t5 pipeline that resumes at each
step to its first batch (what a restarted run waits for its data).
Packing ("pack True") fills rows with several proteins: fewer rows per
second (seqio's packer works one protein at a time) but more residues per row.

The machine is shared: the one-minute load average before and after is
printed and saved with the figures, with the CPU count.
Prints a table and writes JSON atomically (temp file then rename).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "pretraining"))


def _fasta_files(paths: list[str]) -> list[str]:
  from protjax.errors import InputError  # pylint: disable=import-outside-toplevel
  files = []
  for p in paths:
    if os.path.isdir(p):
      found = sorted(f for ext in ("*.fasta", "*.fa", "*.faa", "*.fasta.gz", "*.fa.gz")
                     for f in glob.glob(os.path.join(p, ext)))
      if not found:
        raise InputError("directory holds no FASTA files (*.fasta, *.fa, *.faa[.gz])", path=p)
      files += found
    elif glob.has_magic(p) or os.path.isfile(p):
      files.append(p)
    else:
      raise InputError("no such file or directory", path=p)
  return files


def measure(task: str, files: list[str], *, length: int, batch_size: int, seconds: float,
            warmup: int, pack: bool) -> dict:
  """Examples/s of one pipeline configuration."""

  from protjax.data import pipeline  # pylint: disable=import-outside-toplevel
  vocab = pipeline.get_spec(task).objective.vocabulary
  lo, hi = int(vocab.residue_ids[0]), int(vocab.residue_ids[-1])
  it = pipeline.get_dataset(task, split="train", sequence_length=length,
                            batch_size=batch_size, seed=0, pack=pack, source_files=files)
  t0 = time.perf_counter()
  for _ in range(warmup):
    next(it)
  warm_s = time.perf_counter() - t0
  batches = residues = masked = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    b = next(it)
    tgt = b.get("decoder_target_tokens", b.get("encoder_target_tokens"))
    res = (tgt >= lo) & (tgt <= hi)
    residues += int(res.sum())
    if "encoder_loss_weights" in b:  # BERT-style: selected positions (incl. kept/random)
      masked += int((res & (b["encoder_loss_weights"] > 0)).sum())
    else:  # ProtT5: positions holding <extra_id_0>
      masked += int((res & (b["encoder_input_tokens"] == vocab.mask_id)).sum())
    batches += 1
  elapsed = time.perf_counter() - start
  return {
      "task": task, "pack": pack, "length": length, "batch_size": batch_size,
      "batches": batches, "seconds": round(elapsed, 2), "warmup_seconds": round(warm_s, 2),
      "examples_per_s": round(batches * batch_size / elapsed, 1),
      "residues_per_s": round(residues / elapsed, 1),
      "masked_fraction": round(masked / max(1, residues), 4),
  }


def measure_resume(task: str, files: list[str], *, length: int, batch_size: int,
                   start_step: int) -> dict:
  """Seconds from building a pipeline that resumes at `start_step` to its first batch."""
  from protjax.data import pipeline  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  next(pipeline.get_dataset(task, split="train", sequence_length=length,
                            batch_size=batch_size, seed=0, start_step=start_step,
                            source_files=files))
  return {"task": task, "start_step": start_step, "records_before": start_step * batch_size,
          "seconds_to_first_batch": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("fasta", nargs="*", default=[DEFAULT_DATA],
                 help="FASTA files, globs or directories")
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
  p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
  p.add_argument("--objectives", nargs="+", default=["t5", "bert"],
                 choices=["t5", "bert", "electra"])
  p.add_argument("--pack", action="store_true", help="also time packed t5 examples")
  p.add_argument("--resume_steps", type=int, nargs="*", default=[0, 1000, 100_000],
                  help="also time a resume at these steps (t5, first batch)")
  p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "data_pipeline.json"))
  args = p.parse_args(argv)

  from protjax.errors import InputError  # pylint: disable=import-outside-toplevel
  try:
    files = _fasta_files(args.fasta)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  load_before = os.getloadavg()[0]
  configs = [(f"protjax_sample_{o}", False) for o in args.objectives]
  if args.pack:
    configs.append(("protjax_sample_t5", True))
  rows = []
  for task, pack in configs:
    rows.append(measure(task, files, length=args.length, batch_size=args.batch_size,
                        seconds=args.seconds, warmup=args.warmup, pack=pack))
  resumes = [measure_resume("protjax_sample_t5", files, length=args.length,
                            batch_size=args.batch_size, start_step=k)
             for k in args.resume_steps]
  load_after = os.getloadavg()[0]

  print(f"\nData pipeline, {len(files)} FASTA file(s), length {args.length}, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs, load avg {load_before:.1f} -> "
        f"{load_after:.1f}")
  print(f"{'objective':<10} {'pack':<5} {'examples/s':>11} {'residues/s':>12} "
        f"{'masked':>7} {'batches':>8}")
  for r in rows:
    obj = r["task"].rsplit("_", 1)[1]
    print(f"{obj:<10} {str(r['pack']):<5} {r['examples_per_s']:>11,.0f} "
          f"{r['residues_per_s']:>12,.0f} {r['masked_fraction']:>7.3f} {r['batches']:>8}")
  for r in resumes:
    print(f"resume at step {r['start_step']:,} ({r['records_before']:,} records in): first "
          f"batch after {r['seconds_to_first_batch']:.2f} s")
  cpu = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
    cpu = names[0] if names else cpu
  result = {"files": files, "machine": f"{platform.node()} ({cpu})", "cpu_count": os.cpu_count(), "load_avg_1min_before": load_before,
            "load_avg_1min_after": load_after, "target_examples_per_s": 5000, "results": rows,
            "resume": resumes}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  from protjax.files import write_text_atomic  # pylint: disable=import-outside-toplevel
  write_text_atomic(args.out, json.dumps(result, indent=2))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
