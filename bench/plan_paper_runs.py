"""Plan the paper's pretraining runs for the slices they ran on, from a CPU.

  python bench/plan_paper_runs.py                       # every paper run (libtpu needed)
  python bench/plan_paper_runs.py --only prott5_xl_bfd  # one (repeatable)
  python bench/plan_paper_runs.py --only prott5_xl_bfd --gin.train.num_microbatches=4

Every pretraining run config in `gin_configs/runs` (ProtT5, ProtBert,
ProtAlbert and any family's run as it lands) goes through `protjax-plan`,
one process per run: the trainer's own step as the gin file configures it,
compiled by XLA:TPU for the slice named in `SLICES` (the paper's: v3-1024
or v3-512; ProtElectra's, ProtTXL's and ProtXLNet's, which no source gives,
on ProtBert's slice for the same corpus, with `STAND_INS` for the batch and
steps their gins require; a run file not listed is planned on the
`TPU v3-N` its header names). Also ProtT5-XL on a modern slice (`MODERN`:
a v5p-128).

For each: mesh, micro-batches, remat, bytes per device (parameters +
optimiser state from the shard shapes, the compiler's temporaries and
total) against the chip's HBM, FITS or DOES NOT FIT, XLA's step-time
estimate, examples/s and MFU, the compile time and the load average of this
machine while it compiled (the figures of a shared machine are slow, not
wrong). `--gin.X=` bindings are passed through to explore a fix; every
plan is kept in `bench/results/plan_paper_runs.json` (keyed by run, slice
and bindings, so a run already planned is not compiled again unless
`--force`), and `bench/results/plan_paper_runs.md` is redrawn from it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNS = REPO / "gin_configs" / "runs"
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

# The slice each paper run trained on (ProtTrans, Table 2 and the model
# cards): v3-1024 = 512 chips, two 16 GiB cores each; v3-512 half of it.
SLICES = {
    "prott5_xl_bfd": "v3-1024", "prott5_xl_u50": "v3-1024",
    "prott5_xxl_bfd": "v3-1024",
    "protbert_bfd": "v3-1024", "protbert_bfd_2048": "v3-1024",
    "protbert_u100": "v3-512", "protbert_u100_2048": "v3-512",
    "protalbert_u100": "v3-512", "protalbert_u100_2048": "v3-512",
}
# No source gives the slices of the other families' runs, nor ProtElectra's
# batch and steps or ProtXLNet's steps (their gins require them). They are
# planned on the slice of ProtBert's run on the same corpus, with ProtBert's
# figures for what their gins leave required (STAND_INS, shown in the
# bindings column): what such a run would need, not the paper's own run.
SLICES.update({"protelectra_bfd": "v3-1024", "protelectra_bfd_1024": "v3-1024",
               "prottxl_bfd": "v3-1024", "prottxl_u100": "v3-512",
               "protxlnet_u100": "v3-512"})
_PROTBERT_BFD_SCHEDULE = ("--gin.linear_warmup_decay.warmup_steps=140000",
                          "--gin.linear_warmup_decay.total_steps=1000000")
STAND_INS = {
    # protbert_bfd.gin's 32k rows of 512; phase 2 the 12.6M tokens a step of
    # protbert_bfd_2048.gin, at 1024.
    "protelectra_bfd": ("--gin.DataConfig.batch_size=32768", "--gin.train.train_steps=800000",
                        *_PROTBERT_BFD_SCHEDULE),
    "protelectra_bfd_1024": ("--gin.DataConfig.batch_size=12288",
                             "--gin.train.train_steps=1000000", *_PROTBERT_BFD_SCHEDULE),
    # protbert_u100.gin's schedule.
    "protxlnet_u100": ("--gin.train.train_steps=300000",
                       "--gin.linear_warmup_decay.warmup_steps=40000",
                       "--gin.linear_warmup_decay.total_steps=400000"),
}
# ProtT5-XL (stage 1) on a slice of today: (run gin, slice).
MODERN = (("prott5_xl_bfd", "v5p-128"),)
NOT_RUNS = ("acid_test", "demo", "pretrain", "continue_pretrain")


def paper_runs() -> list[tuple[str, str]]:
  """(run gin name, slice) of every pretraining run config, plus the modern
  slice's run; a run with no known slice is listed with slice None."""
  out = []
  for path in sorted(RUNS.glob("*.gin")):
    name = path.stem
    if name.startswith(NOT_RUNS):
      continue
    slice_name = SLICES.get(name)
    if slice_name is None:
      m = re.search(r"TPU\s+(v\d+[a-z]?-\d+)", path.read_text())
      slice_name = m.group(1) if m else None
    out.append((name, slice_name))
  return out + [m for m in MODERN if (RUNS / f"{m[0]}.gin").exists()]


def gin_digest(run: str) -> str:
  """A digest of the run's gin file and every file it includes: a plan kept
  for an earlier version of the configuration is not the current one."""
  h = hashlib.sha256()
  todo, seen = [RUNS / f"{run}.gin"], set()
  while todo:
    path = todo.pop()
    if path in seen or not path.exists():
      continue
    seen.add(path)
    text = path.read_text()
    h.update(text.encode())
    todo += [REPO / m for m in re.findall(r"^include\s+'([^']+)'", text, re.M)]
  return h.hexdigest()[:12]


def key(run: str, slice_name: str, bindings: list[str], digest: str) -> str:
  return " ".join([run, slice_name, *bindings, f"@{digest}"])


def plan_one(run: str, slice_name: str, bindings: list[str], max_rss: int = 0) -> dict:
  """protjax-plan in its own process; its JSON plus exit code and timing."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "plan.json"
    cmd = [sys.executable, "-m", "protjax.plan", f"--gin_file={RUNS / run}.gin",
           f"--topology={slice_name}", f"--json={out}", *bindings]
    load_before = os.getloadavg()
    start = time.time()
    with open(pathlib.Path(tmp) / "stdout", "w+") as stdout, \
        open(pathlib.Path(tmp) / "stderr", "w+") as stderr:
      proc = subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr,
                              preexec_fn=_oom_first)
      peak = _watch(proc, max_rss)
      stdout.seek(0)
      stderr.seek(0)
      out_text, err_text = stdout.read(), stderr.read()
    entry = {"run": run, "slice": slice_name, "bindings": bindings,
             "gin_digest": gin_digest(run),
             "exit_code": proc.returncode, "wall_seconds": time.time() - start,
             "peak_rss_bytes": peak,
             "load_average_before": list(load_before),
             "load_average_after": list(os.getloadavg()),
             "date": time.strftime("%Y-%m-%d %H:%M")}
    if out.exists():
      entry["plan"] = json.loads(out.read_text())
    elif proc.returncode == -9 and not (max_rss and peak > max_rss):
      entry["error"] = (f"killed (exit -9, the OOM killer?) at {peak / 2**30:.1f} GiB "
                        "resident: the compiler needs more memory than this machine had free")
    elif max_rss and peak > max_rss:
      entry["error"] = (f"stopped: the compiler's memory passed {max_rss / 2**30:.0f} GiB "
                        "on this machine (--max_rss_gib)")
    else:
      entry["error"] = (err_text.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    print(out_text, end="", flush=True)
    return entry


def _oom_first() -> None:
  """In the plan's process: be the first the kernel's OOM killer takes, so
  that a compile too big for a shared machine ends itself, not a neighbour."""
  try:
    with open("/proc/self/oom_score_adj", "w") as f:
      f.write("1000")
  except OSError:
    pass


def _rss(pid: int) -> int:
  """Resident bytes of a process (Linux /proc), 0 once it is gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _watch(proc: subprocess.Popen, max_rss: int) -> int:
  """Waits for `proc`, killing it if its memory passes `max_rss` (0: never):
  an XLA:TPU compile of a 1024-device step can take more memory than a
  shared workstation has, and the kernel's OOM killer picks any process.
  Returns the peak resident bytes seen."""
  peak = 0
  while proc.poll() is None:
    peak = max(peak, _rss(proc.pid))
    if max_rss and peak > max_rss:
      proc.kill()
      proc.wait()
      break
    time.sleep(1)
  return peak


def _gib(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f}"


HEADER = ("| run | slice | mesh (data x model, rules) | micro-batches | remat "
          "| params + opt / device (GiB) | temporaries (GiB) | total / HBM (GiB) | fits "
          "| est. step | examples/s | MFU | compile (load) | bindings |")


def _row(e: dict) -> str:
  p = e.get("plan")
  if p is None:
    return f"| {e['run']} | {e['slice']} | {e.get('error', '?')} |" + " |" * 11
  mem, mesh = p["memory"], p["mesh"]
  step, rate, mfu = (p.get("estimated_step_seconds"), p.get("examples_per_second"),
                     p.get("mfu"))
  cells = [
      e["run"], e["slice"],
      f"{mesh['shape']['data']} x {mesh['shape']['model']}, {p['rules']}",
      str(p.get("num_microbatches", "")), str(p.get("remat", "")),
      _gib(p["params_bytes"] + p["opt_state_bytes"]), _gib(mem.get("temp")),
      f"{_gib(mem.get('total'))} / {_gib(p['memory_per_device'])}",
      "FITS" if p["fits"] else "**DOES NOT FIT**",
      "n/a" if step is None else f"{step * 1e3:.0f} ms",
      "n/a" if not rate else f"{rate:,.0f}",
      "n/a" if mfu is None else f"{mfu * 100:.1f}%",
      f"{p['compile_seconds']:.0f} s ({e['load_average_before'][0]:.1f})",
      " ".join(e["bindings"]) or "as configured"]
  return "| " + " | ".join(cells) + " |"


def render(entries: list[dict]) -> str:
  """Markdown: each run as configured now, then every plan kept."""
  current = {}
  for e in entries:
    if (e["bindings"] == list(STAND_INS.get(e["run"], ()))
        and e.get("gin_digest") == gin_digest(e["run"])):
      current[(e["run"], e["slice"])] = e
  lines = [
      "# The paper's pretraining runs, planned by protjax-plan (XLA:TPU, compiled on a CPU)",
      "",
      "Written by `bench/plan_paper_runs.py`. Bytes are per device (a v3 device is one",
      "core with 16 GiB; v4/v5p devices are whole megacore chips). Params + opt are",
      "the shard shapes the partitioner gives; temporaries and total are XLA:TPU's",
      "(total = its peak of live buffers + the program, what it checks against a",
      "core's 15.48 GiB usable; plans made before that figure was kept show the",
      "plain sum arguments + outputs - donated + temporaries + program). Where",
      "XLA:TPU refuses the program, the total is its figure for the temporaries",
      "plus the arguments. Step time is XLA's own estimate",
      "(`cost_analysis()['optimal_seconds']`), not a measurement; MFU = the",
      "family's model FLOPs per step / (step time x peak x devices). Compile time",
      "is on a shared 2-core CPU, with the 1-minute load average beside it.",
      "ProtElectra, ProtTXL and ProtXLNet: no source gives their slices, nor",
      "ProtElectra's batch and steps or ProtXLNet's steps; they are planned on",
      "ProtBert's slice for the same corpus with ProtBert's figures (the",
      "bindings column), to show what such a run needs.",
      "",
      "## Each run as its gin file configures it now",
      "",
      HEADER, "|" + " --- |" * 14]
  for run, slice_name in paper_runs():
    e = current.get((run, slice_name))
    if slice_name is None:
      lines.append(f"| {run} | ? | not planned: no slice known for this run (add it to "
                   "SLICES in bench/plan_paper_runs.py) |" + " |" * 11)
    else:
      lines.append(_row(e) if e else f"| {run} | {slice_name} | not planned with the "
                   "current gin file yet |" + " |" * 11)
  lines += ["", "## Every plan kept (earlier gin files and the fixes explored)", "",
            HEADER[:-1] + "| gin |", "|" + " --- |" * 15]
  for e in entries:
    now = e.get("gin_digest") == gin_digest(e["run"])
    lines.append(_row(e) + (" current |" if now else " earlier |"))
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", action="append", default=[],
                      help="run gin name (repeatable), e.g. prott5_xl_bfd")
  parser.add_argument("--slice", default=None, help="override the run's slice")
  parser.add_argument("--force", action="store_true", help="plan again what is kept")
  parser.add_argument("--out", default=str(RESULTS / "plan_paper_runs.json"))
  parser.add_argument("--max_rss_gib", type=float, default=0,
                      help="kill a plan whose compiler passes this much memory (0: never)")
  args, bindings = parser.parse_known_args(argv)
  bad = [b for b in bindings if not b.startswith("--gin.")]
  if bad:
    parser.error(f"unknown arguments {bad}")
  from protjax import files  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(args.out)
  entries = json.loads(out.read_text()) if out.exists() else []
  kept = {key(e["run"], e["slice"], e["bindings"], e.get("gin_digest", "?")): e
          for e in entries}
  todo = [(r, args.slice or s) for r, s in paper_runs()
          if not args.only or r in args.only]
  for run, slice_name in todo:
    if slice_name is None:
      print(f"{run}: no slice known (add it to SLICES); not planned", flush=True)
      continue
    run_bindings = [*STAND_INS.get(run, ()), *bindings]
    k = key(run, slice_name, run_bindings, gin_digest(run))
    if k in kept and not args.force:
      print(f"{k}: kept from {kept[k]['date']} (--force to plan again)", flush=True)
      continue
    print(f"== {k}", flush=True)
    kept[k] = plan_one(run, slice_name, run_bindings, int(args.max_rss_gib * 2**30))
    entries = list(kept.values())
    files.write_text_atomic(out, json.dumps(entries, indent=1) + "\n")
    files.write_text_atomic(out.with_suffix(".md"), render(entries))
  return 0


if __name__ == "__main__":
  sys.exit(main())
