"""How much of an acid-test CB513 lead is the probe's own training noise?

  python bench/acid_probe_seeds.py --work_dir /tmp/protjax_acid --seeds 1,2

The acid test trains each CNN probe once (seed `--seed`, default 0), and its
standard errors, unpaired or paired, resample CB513 proteins only: neither
counts what another probe-training seed (weight init, batch order, the
early-stopping split) would change. This retrains the trained-LM and
random-LM CNN probes of an acid-test work dir with other seeds, on the cached
embeddings and with the run's probe settings, and scores each on CB513 Q3.
Prints a table and writes `<work_dir>/probe_seeds.json` (or `--out`).

`--standardize_residues` asks a second question: does the lead change when
each embedding feature is standardised over the training residues before the
CNN (`TrainConfig.standardize_residues`; the acid test, as the paper, feeds
the raw last hidden state)? Every seed is then retrained, the run's own too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import acid_test  # noqa: E402  (bench/acid_test.py)
from protjax.probes import metrics  # noqa: E402
from protjax.probes import train as ptrain  # noqa: E402

KINDS = ("trained_lm", "random_lm")


def _probe_config(work: str) -> ptrain.TrainConfig:
  """The CNN-probe settings the acid test used on `work` (its probes stage)."""
  with open(os.path.join(work, "stage_probes.json")) as f:
    return ptrain.TrainConfig(**json.load(f)["ss_config"])


def cb513_q3(work: str, kind: str, data_dir: str, seed: int,
             config: ptrain.TrainConfig) -> dict:
  """Trains `kind`'s CNN probe with `seed` (seed = the run's: its saved probe)
  and scores it on CB513: accuracy, SE and per-protein counts."""
  probes = os.path.join(work, "probes")
  cb513_csv = os.path.join(data_dir, acid_test.SS, "CB513.csv")
  h5 = os.path.join(probes, f"{kind}_CB513.h5")
  if seed == config.seed and not config.standardize_residues:
    probe = ptrain.load_probe(os.path.join(probes, f"probe_{kind}_cnn"))
  else:
    with tempfile.TemporaryDirectory() as scratch:
      probe = ptrain.train_residue_probe(
          os.path.join(probes, f"{kind}_train.h5"),
          os.path.join(data_dir, acid_test.SS, "netsurfp2_train.csv.gz"),
          config=dataclasses.replace(config, seed=seed),
          out_dir=os.path.join(scratch, "probe"), progress=False)
  q3 = ptrain.evaluate(probe, h5, cb513_csv, cb513=True)["metrics"]["Q3"]
  return {"accuracy": q3["accuracy"], "se": q3["se"], "per_protein": q3["per_protein"],
          "best_epoch": probe.meta["best_epoch"]}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--work_dir", required=True, help="an acid-test work dir (probes cached)")
  ap.add_argument("--seeds", default="1,2",
                  help="probe seeds to train besides the run's own (comma-separated)")
  ap.add_argument("--standardize_residues", action="store_true",
                  help="standardise each feature over the training residues before the CNN")
  ap.add_argument("--out", default=None, help="JSON path (default <work_dir>/probe_seeds.json, "
                  "probe_seeds_standardized.json with --standardize_residues)")
  args = ap.parse_args(argv)
  work = os.path.abspath(args.work_dir)
  config = dataclasses.replace(_probe_config(work),
                               standardize_residues=args.standardize_residues)
  with open(os.path.join(work, "stage_probe_data.json")) as f:
    data_dir = json.load(f)["dir"]
  seeds = [config.seed] + [int(s) for s in args.seeds.split(",") if int(s) != config.seed]
  rows = []
  for seed in seeds:
    t = time.time()
    q3 = {kind: cb513_q3(work, kind, data_dir, seed, config) for kind in KINDS}
    tr, rd = q3["trained_lm"], q3["random_lm"]
    diff = tr["accuracy"] - rd["accuracy"]
    paired = metrics.paired_bootstrap_se(tr["per_protein"]["correct"],
                                         rd["per_protein"]["correct"], tr["per_protein"]["total"])
    rows.append({"seed": seed, "trained_q3": tr["accuracy"], "random_q3": rd["accuracy"],
                 "difference": diff, "combined_se": (tr["se"] ** 2 + rd["se"] ** 2) ** 0.5,
                 "paired_se": paired, "best_epochs": [tr["best_epoch"], rd["best_epoch"]],
                 "seconds": time.time() - t})
    print(f"seed {seed}: trained {tr['accuracy']:.2f} random {rd['accuracy']:.2f} "
          f"diff {diff:+.2f} ({time.time() - t:.0f} s)", flush=True)
  diffs = [r["difference"] for r in rows]
  summary = {"work_dir": work, "standardize_residues": args.standardize_residues, "rows": rows,
             "median_difference": statistics.median(diffs),
             "min_difference": min(diffs), "max_difference": max(diffs),
             "difference_sd_over_seeds": statistics.stdev(diffs) if len(diffs) > 1 else None}
  out = args.out or os.path.join(
      work, "probe_seeds_standardized.json" if args.standardize_residues else "probe_seeds.json")
  acid_test.write_json_atomic(out, summary)
  print("| probe seed | trained CB513 Q3 | random CB513 Q3 | difference | combined SE | paired SE |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['seed']} | {r['trained_q3']:.2f} | {r['random_q3']:.2f} | "
          f"{r['difference']:+.2f} | {r['combined_se']:.2f} | {r['paired_se']:.2f} |")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
