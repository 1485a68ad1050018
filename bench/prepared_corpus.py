"""Prepared-corpus benchmark: UniRef/BFD-scale input pipeline, by simulation.

  python bench/prepared_corpus.py [--records 10000000] [--files 16]
      [--workdir /tmp/protjax_prepared_bench | --corpus_dir DIR [--prepare_only]]
      [--length 512] [--batch_size 64] [--seconds 20] [--keep]
      [--out bench/results/prepared_corpus.json]

Preparing 10 million records takes minutes and fills the page cache; to time
the pipeline on a quiet machine, prepare once and measure later:
  python bench/prepared_corpus.py --corpus_dir /tmp/corpus10m --prepare_only
  python bench/prepared_corpus.py --corpus_dir /tmp/corpus10m
`--corpus_dir` keeps the corpus (never deleted): steps 1-2 run only if DIR
holds no complete corpus of `--records` records in `--files` files
(`DIR/corpus.json`, written once the prepared folder is complete, records
their figures, reported again by later runs); the FASTA is deleted once
prepared (3.6 GB of disk and page cache the measurement does not read).

1. Writes a synthetic corpus of `--records` protein-like FASTA records
   (`--files` files, 60 residues a line): lengths log-normal with median 250
   and mean about 330 (UniRef50-like), clipped to [20, 35,000]; residues
   drawn with UniProt's amino-acid frequencies. Not timed.
2. `protjax.data.prepared.prepare` on all CPUs: records/s.
3. `protjax.data.config.get_dataset` for the prepared ProtT5 task (and BERT)
   at `--length`, `--batch_size` rows per host, counted for `--seconds`:
   examples/s per host, and per CPU-second of the process (all threads;
   steadier on a shared machine), for one host's rows of a 4-host global
   batch (the work per host does not depend on the host count).
4. Seconds from building a pipeline that resumes at step 1 and at step
   1,000,000 to its first batch (in this process, after imports), and the
   same from a fresh Python process (its imports included: neither
   TensorFlow nor seqio since the prepared path needs neither).
5. The global batches at steps 0, 1 and 1,000,000 from 1, 2 and 4 simulated
   hosts, and from 2 hosts for steps 0-1 then 4 hosts after a resume at 2:
   identical or not.

The machine is shared: the one-minute load average is recorded before each
figure. The synthetic corpus is deleted at the end unless `--keep` or
`--corpus_dir`.
Prints a table and writes JSON atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# UniProtKB/Swiss-Prot amino-acid composition (%), release 2024.
AA_FREQ = {"A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75,
           "G": 7.07, "H": 2.27, "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86,
           "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87}
LINE = 60
HEADER = 24  # b">SYN000000001 synthetic\n"


def _load() -> float:
  return round(os.getloadavg()[0], 2)


def write_fasta(path: str, first_id: int, n: int, rng: np.random.Generator,
                chunk: int = 100_000) -> int:
  """n synthetic records (ids first_id...) into `path`; returns the residues written."""
  letters = np.frombuffer("".join(AA_FREQ).encode(), np.uint8)
  cdf = np.cumsum(list(AA_FREQ.values()))
  cdf /= cdf[-1]
  total = 0
  with open(path, "wb") as f:
    for lo in range(0, n, chunk):
      m = min(chunk, n - lo)
      lens = np.clip(np.rint(rng.lognormal(np.log(250), 0.75, m)), 20, 35_000).astype(np.int64)
      lines = -(-lens // LINE)
      sizes = HEADER + lens + lines
      base = np.cumsum(sizes) - sizes
      out = np.full(int(sizes.sum()), ord("\n"), np.uint8)
      ids = first_id + lo + np.arange(m, dtype=np.int64)
      digits = (ids[:, None] // 10 ** np.arange(8, -1, -1)) % 10 + ord("0")
      head = np.empty((m, HEADER), np.uint8)
      head[:, 0:4] = np.frombuffer(b">SYN", np.uint8)
      head[:, 4:13] = digits
      head[:, 13:] = np.frombuffer(b" synthetic\n", np.uint8)
      out[(base[:, None] + np.arange(HEADER)).ravel()] = head.ravel()
      j = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
      pos = np.repeat(base + HEADER, lens) + j + j // LINE
      out[pos] = letters[np.searchsorted(cdf, rng.random(len(j)))]
      f.write(out.tobytes())
      total += int(lens.sum())
  return total


def make_corpus(workdir: str, records: int, files: int) -> dict:
  fasta_dir = os.path.join(workdir, "fasta")
  os.makedirs(fasta_dir, exist_ok=True)
  per = -(-records // files)
  residues = 0
  t0 = time.perf_counter()
  for i in range(files):
    n = min(per, records - i * per)
    residues += write_fasta(os.path.join(fasta_dir, f"syn_{i:03d}.fasta"), i * per, n,
                            np.random.default_rng(i))
  return {"records": records, "files": files, "residues": residues,
          "mean_length": round(residues / records, 1),
          "fasta_bytes": sum(os.path.getsize(os.path.join(fasta_dir, f))
                             for f in os.listdir(fasta_dir)),
          "generate_seconds": round(time.perf_counter() - t0, 1), "dir": fasta_dir}


def throughput(task: str, corpus_dir: str, *, length: int, batch_size: int,
               seconds: float) -> dict:
  """Examples/s of host 0 of 4 (batch_size rows of a 4 x batch_size global batch)."""
  from protjax.data import config  # pylint: disable=import-outside-toplevel
  from protjax.data.config import ShardInfo  # pylint: disable=import-outside-toplevel
  load = _load()
  it = config.get_dataset(task, split="train", sequence_length=length, batch_size=batch_size,
                          seed=0, shard_info=ShardInfo(0, 4), source_files=corpus_dir)
  for _ in range(3):
    next(it)
  n, start, cpu = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  elapsed = time.perf_counter() - start
  cpu = time.process_time() - cpu  # every thread of the process: steadier on a shared box
  it.close()
  return {"task": task, "length": length, "batch_size_per_host": batch_size,
          "examples_per_s": round(n * batch_size / elapsed, 1),
          "examples_per_cpu_s": round(n * batch_size / cpu, 1), "batches": n,
          "load_avg_1min": load}


def resume_latency(task: str, corpus_dir: str, *, length: int, batch_size: int,
                   step: int) -> dict:
  """Seconds to the first batch of a pipeline resuming at `step`, built in this
  process and in a fresh one (imports included)."""
  from protjax.data import config  # pylint: disable=import-outside-toplevel
  load = _load()
  t0 = time.perf_counter()
  it = config.get_dataset(task, split="train", sequence_length=length, batch_size=batch_size,
                          seed=0, start_step=step, source_files=corpus_dir)
  next(it)
  in_process = time.perf_counter() - t0
  it.close()
  code = ("import time; t0 = time.perf_counter(); from protjax.data import config; "
          f"it = config.get_dataset({task!r}, split='train', sequence_length={length}, "
          f"batch_size={batch_size}, seed=0, start_step={step}, source_files={corpus_dir!r}); "
          "next(it); print(time.perf_counter() - t0)")
  t1 = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  fresh_wall = time.perf_counter() - t1
  return {"start_step": step, "seconds_in_process": round(in_process, 3),
          "seconds_fresh_process_after_start": round(float(out.stdout.split()[-1]), 2),
          "seconds_fresh_process_wall": round(fresh_wall, 2), "load_avg_1min": load}


def global_batch(task: str, corpus_dir: str, step: int, hosts: int, *, length: int,
                 global_batch_size: int, start: int = None) -> dict:
  """The global batch at `step` assembled from `hosts` simulated hosts, each
  resuming at `start` (default: at `step`)."""
  from protjax.data import config  # pylint: disable=import-outside-toplevel
  from protjax.data.config import ShardInfo  # pylint: disable=import-outside-toplevel
  parts = []
  for h in range(hosts):
    it = config.get_dataset(task, split="train", sequence_length=length,
                            batch_size=global_batch_size // hosts, seed=0,
                            start_step=step if start is None else start,
                            shard_info=ShardInfo(h, hosts), source_files=corpus_dir)
    for _ in range(step - (step if start is None else start)):
      next(it)
    parts.append(next(it))
    it.close()
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def same_batches(task: str, corpus_dir: str, *, length: int) -> dict:
  """Global batches of 1, 2 and 4 hosts (and 2 -> 4 at a resume) compared."""
  g = 16
  out = {}
  for step in (0, 1, 1_000_000):
    ref = global_batch(task, corpus_dir, step, 1, length=length, global_batch_size=g)
    for hosts in (2, 4):
      other = global_batch(task, corpus_dir, step, hosts, length=length, global_batch_size=g)
      out[f"step {step}: 1 vs {hosts} hosts"] = all(np.array_equal(ref[k], other[k])
                                                    for k in ref)
  # A run on 2 hosts for steps 0-1, resumed on 4 hosts at step 2, against 1 host.
  ref = [global_batch(task, corpus_dir, s, 1, length=length, global_batch_size=g, start=0)
         for s in range(4)]
  changed = [global_batch(task, corpus_dir, s, 2, length=length, global_batch_size=g, start=0)
             for s in range(2)]
  changed += [global_batch(task, corpus_dir, s, 4, length=length, global_batch_size=g,
                           start=2) for s in range(2, 4)]
  out["steps 0-3: 1 host vs 2 hosts then 4 after a resume at 2"] = all(
      np.array_equal(a[k], b[k]) for a, b in zip(ref, changed) for k in a)
  return out


CORPUS_META = "corpus.json"


def make_and_prepare(workdir: str, records: int, files: int, workers) -> dict:
  """Steps 1-2: the synthetic FASTA, then the prepared corpus in workdir/prepared."""
  from protjax.data import prepared  # pylint: disable=import-outside-toplevel
  load = _load()
  corpus = make_corpus(workdir, records, files)
  corpus["load_avg_1min"] = load
  load = _load()
  out_dir = os.path.join(workdir, "prepared")
  index = prepared.prepare(os.path.join(corpus["dir"], "*.fasta"), out_dir, workers=workers)
  total = sum(index["splits"][s]["records"] for s in prepared.SPLITS)
  prep = {"seconds": round(index["seconds"], 1), "records": total,
          "records_per_s": round(total / index["seconds"], 1) if index["seconds"] else None,
          "workers": workers or os.cpu_count(),
          "prepared_bytes": sum(os.path.getsize(os.path.join(out_dir, f))
                                for f in os.listdir(out_dir) if f.endswith(".array_record")),
          "train": index["splits"]["train"]["records"],
          "validation": index["splits"]["validation"]["records"], "load_avg_1min": load,
          "nice": os.nice(0)}
  return {"corpus": corpus, "prepare": prep}


def reusable_corpus(workdir: str, records: int, files: int):
  """The figures of a complete corpus of `records` records in `files` files
  made earlier in `workdir` (its CORPUS_META), or None if there is none."""
  from protjax.data import prepared  # pylint: disable=import-outside-toplevel
  from protjax.errors import InputError  # pylint: disable=import-outside-toplevel
  try:
    with open(os.path.join(workdir, CORPUS_META)) as f:
      made = json.load(f)
    prepared.read_index(os.path.join(workdir, "prepared"))
  except (OSError, ValueError, KeyError, InputError):
    return None
  if (made.get("corpus", {}).get("records"), made["corpus"].get("files")) != (records, files):
    return None
  made["prepare"]["reused"] = True
  return made


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--records", type=int, default=10_000_000)
  p.add_argument("--files", type=int, default=16)
  p.add_argument("--workdir", default="/tmp/protjax_prepared_bench")
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--batch_size", type=int, default=64, help="rows per host")
  p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per objective")
  p.add_argument("--workers", type=int, default=None, help="prepare processes (CPU count)")
  p.add_argument("--keep", action="store_true", help="keep the synthetic corpus")
  p.add_argument("--corpus_dir", default=None,
                 help="make the corpus here once, keep it, and reuse it in later runs")
  p.add_argument("--prepare_only", action="store_true",
                 help="stop once the corpus is prepared (steps 1-2)")
  p.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                               "prepared_corpus.json"))
  args = p.parse_args(argv)

  result = {"machine": f"{platform.node()} ({platform.machine()})", "cpu_count": os.cpu_count()}
  workdir = args.corpus_dir or args.workdir
  out_dir = os.path.join(workdir, "prepared")
  try:
    made = reusable_corpus(args.corpus_dir, args.records, args.files) if args.corpus_dir else None
    if made is None:
      made = make_and_prepare(workdir, args.records, args.files, args.workers)
      if args.corpus_dir:  # complete: later runs reuse it
        from protjax.files import write_text_atomic  # pylint: disable=import-outside-toplevel
        write_text_atomic(os.path.join(workdir, CORPUS_META), json.dumps(made, indent=2))
        shutil.rmtree(made["corpus"]["dir"], ignore_errors=True)
    else:
      print(f"reusing the prepared corpus in {out_dir} (figures of the run that made it)")
    result.update(made)
    c, pr = made["corpus"], made["prepare"]
    print(f"synthetic corpus: {c['records']:,} records, mean length {c['mean_length']}, "
          f"{c['fasta_bytes'] / 1e9:.2f} GB FASTA ({c['generate_seconds']} s)", flush=True)
    print(f"prepare: {pr['records_per_s']:,.0f} records/s ({pr['seconds']} s)", flush=True)
    if args.prepare_only:
      print(f"prepared corpus in {out_dir}; measure with --corpus_dir {workdir}")
      return 0
    result["throughput"] = [throughput(f"uniref50_prepared_{o}", out_dir, length=args.length,
                                       batch_size=args.batch_size, seconds=args.seconds)
                            for o in ("t5", "bert")]
    result["resume"] = [resume_latency("uniref50_prepared_t5", out_dir, length=args.length,
                                       batch_size=args.batch_size, step=s)
                        for s in (1, 1_000_000)]
    load = _load()
    result["same_global_batches"] = same_batches("uniref50_prepared_t5", out_dir,
                                                 length=args.length)
    result["same_global_batches_load_avg_1min"] = load
  finally:
    if not args.keep and not args.corpus_dir:
      shutil.rmtree(args.workdir, ignore_errors=True)

  c, pr = result["corpus"], result["prepare"]
  print(f"\nPrepared corpus, {c['records']:,} synthetic records (mean length "
        f"{c['mean_length']}), {os.cpu_count()} CPUs (shared; 1-min load average per figure)")
  print(f"prepare: {pr['records_per_s']:,.0f} records/s over {pr['workers']} workers, "
        f"{pr['seconds']} s, {pr['prepared_bytes'] / 1e9:.2f} GB prepared from "
        f"{c['fasta_bytes'] / 1e9:.2f} GB FASTA (load {pr['load_avg_1min']})")
  for r in result["throughput"]:
    print(f"{r['task']}: {r['examples_per_s']:,.0f} examples/s per host at length "
          f"{r['length']} ({r['examples_per_cpu_s']:,.0f} per CPU-second) "
          f"(load {r['load_avg_1min']})")
  for r in result["resume"]:
    print(f"resume at step {r['start_step']:,}: first batch after {r['seconds_in_process']:.3f} s "
          f"in process, {r['seconds_fresh_process_after_start']:.2f} s in a fresh process "
          f"after Python started ({r['seconds_fresh_process_wall']:.2f} s wall) "
          f"(load {r['load_avg_1min']})")
  for k, v in result["same_global_batches"].items():
    print(f"{k}: {'identical' if v else 'DIFFERENT'}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  from protjax.files import write_text_atomic  # pylint: disable=import-outside-toplevel
  write_text_atomic(args.out, json.dumps(result, indent=2))
  print(f"wrote {args.out}")
  return 0 if all(result["same_global_batches"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
