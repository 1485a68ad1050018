"""DeepOneHot / DeepBLOSUM62 baselines on the real probe data (no language model).

  python bench/probe_baselines.py --data ../shared/data [--work /tmp/probe_bench]

For each featuriser (one-hot, BLOSUM62):
  * secondary structure: featurise NetSurfP-2.0 train, CB513 and TS115; train
    the per-residue CNN on NetSurfP-2.0 train (5% held out for early stopping);
    report Q3 / Q8 +- bootstrap SE on CB513 (disorder==1 and cb513_mask==1) and
    TS115 (disorder==1).
  * localisation (DeepLoc 1.0): pooled features (default mean) -> the
    per-protein FNN with location + membrane heads. Membrane labels exist only
    in `deeploc_val_membrane.fasta`, and 977 of its 1,678 sequences also occur
    (identical) in the 10-class training file. So Q10 / Q2 are measured by
    5-fold cross-validation over the validation file: each fold's probe trains
    on the training file (minus every sequence that occurs in the validation
    file) plus the other four folds, and predicts the held-out fold; Q10 / Q2
    are pooled over the out-of-fold predictions (bootstrap SE over proteins).
    `Cytoplasm-Nucleus` proteins count for neither Q10 nor training of the
    location head; U (unknown membrane) is excluded from Q2. A probe trained on
    the deduplicated training file alone is also scored on the whole
    validation file (Q10 only: that file has no membrane labels).

Writes `bench/results/probe_baselines.json` and `.md` (Markdown table) and prints
the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from protjax import featurize  # noqa: E402
from protjax import files  # noqa: E402
from protjax.data import readers  # noqa: E402
from protjax.probes import data as pdata  # noqa: E402
from protjax.probes import metrics  # noqa: E402
from protjax.probes import train as ptrain  # noqa: E402

SS = "secondary_structure"
LOC = "localization"


def _featurize(kind: str, src: str, out: str, csv: bool) -> str:
  if not os.path.exists(out):
    recs = ((r, s) for r, s, _ in readers.read_netsurfp_csv(src)) if csv else \
        readers.read_fasta(src)
    t = time.time()
    n = featurize.featurize_records(kind, recs, out, source=src)
    print(f"  featurised {n} proteins of {os.path.basename(src)} ({kind}) "
          f"in {time.time() - t:.0f}s", flush=True)
  return out


def run_ss(kind: str, data_dir: str, work: str, config: ptrain.TrainConfig,
           model: str) -> dict:
  files = {"train": "netsurfp2_train.csv.gz", "CB513": "CB513.csv", "TS115": "TS115.csv"}
  h5 = {k: _featurize(kind, os.path.join(data_dir, SS, f),
                      os.path.join(work, f"{kind}_{k}.h5"), csv=True)
        for k, f in files.items()}
  t = time.time()
  probe = ptrain.train_residue_probe(h5["train"], os.path.join(data_dir, SS, files["train"]),
                                     model=model, config=config,
                                     out_dir=os.path.join(work, f"probe_{kind}_{model}"),
                                     overwrite=True)  # a rerun retrains its work dir's probe
  train_s = time.time() - t
  out = {"train_seconds": train_s, "best_epoch": probe.meta["best_epoch"],
         "epochs": len(probe.meta["history"]), "history": probe.meta["history"]}
  for name in ("CB513", "TS115"):
    rep = ptrain.evaluate(probe, h5[name], os.path.join(data_dir, SS, files[name]),
                          cb513=name == "CB513")
    out[name] = rep
    m = rep["metrics"]
    print(f"  {kind} {model} {name}: Q3 {m['Q3']['accuracy']:.2f} +- {m['Q3']['se']:.2f}  "
          f"Q8 {m['Q8']['accuracy']:.2f} +- {m['Q8']['se']:.2f}", flush=True)
  return out


def run_loc(kind: str, data_dir: str, work: str, config: ptrain.TrainConfig,
            pooling: str, folds: int) -> dict:
  tr_fa = os.path.join(data_dir, LOC, "deeploc_train_10class.fasta")
  tr_csv = os.path.join(data_dir, LOC, "deeploc_train_10class_labels.csv")
  va_fa = os.path.join(data_dir, LOC, "deeploc_val_membrane.fasta")
  tr_h5 = _featurize(kind, tr_fa, os.path.join(work, f"{kind}_deeploc_train.h5"), csv=False)
  va_h5 = _featurize(kind, va_fa, os.path.join(work, f"{kind}_deeploc_val.h5"), csv=False)
  train = pdata.load_protein_set(tr_h5, tr_fa, tr_csv, pooling=pooling)
  val = pdata.load_protein_set(va_h5, va_fa, pooling=pooling)
  val_seqs = set(val.sequences)
  keep = [i for i, s in enumerate(train.sequences) if s not in val_seqs]
  n_overlap = len(train) - len(keep)
  train = train.subset(keep)

  # Cross-validation over the validation file: both heads get labels.
  rng = np.random.default_rng(config.seed)
  fold_of = rng.permutation(len(val)) % folds
  preds = {"location": np.zeros(len(val), np.int32), "membrane": np.zeros(len(val), np.int32)}
  t = time.time()
  for k in range(folds):
    rest = val.subset(np.flatnonzero(fold_of != k))
    pool_set = pdata.concat_protein_sets([train, rest])
    tr_idx, es_idx = pdata.split_indices(len(pool_set), 0.1, config.seed + k)
    probe = ptrain.fit_protein(pool_set.subset(tr_idx), pool_set.subset(es_idx),
                               config=config, progress=False)
    held = np.flatnonzero(fold_of == k)
    p = ptrain.predict_proteins(probe, val.subset(held))
    for h in preds:
      preds[h][held] = p[h]
  cv = {
      "Q10": metrics.score_proteins(val.location, preds["location"], val.location >= 0,
                                    pdata.LOCATIONS),
      "Q2": metrics.score_proteins(val.membrane, preds["membrane"], val.membrane >= 0,
                                   pdata.MEMBRANE),
  }
  cv_s = time.time() - t
  # Train-file-only probe, scored on the whole validation file (Q10).
  tr_idx, es_idx = pdata.split_indices(len(train), 0.1, config.seed)
  probe = ptrain.fit_protein(train.subset(tr_idx), train.subset(es_idx), config=config,
                             progress=False)
  only = ptrain.evaluate_protein_set(probe, val)
  print(f"  {kind} DeepLoc ({pooling}) {folds}-fold CV: Q10 {cv['Q10']['accuracy']:.2f} +- "
        f"{cv['Q10']['se']:.2f}  Q2 {cv['Q2']['accuracy']:.2f} +- {cv['Q2']['se']:.2f}; "
        f"train-file-only Q10 {only['Q10']['accuracy']:.2f} +- {only['Q10']['se']:.2f}",
        flush=True)
  return {"pooling": pooling, "folds": folds, "n_train_after_dedup": len(train),
          "n_train_removed_overlap": n_overlap, "n_val": len(val),
          "cv_seconds": cv_s, "cv": cv, "train_only": only}


def markdown(results: dict) -> str:
  lines = ["| baseline | CB513 Q3 | CB513 Q8 | TS115 Q3 | TS115 Q8 | DeepLoc Q10 | DeepLoc Q2 |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  f = lambda m: f"{m['accuracy']:.1f} ± {m['se']:.1f}"
  for kind, r in results["baselines"].items():
    ss, loc = r.get("ss"), r.get("loc")
    cells = []
    for name in ("CB513", "TS115"):
      for q in ("Q3", "Q8"):
        cells.append(f(ss[name]["metrics"][q]) if ss else "-")
    for q in ("Q10", "Q2"):
      cells.append(f(loc["cv"][q]) if loc else "-")
    lines.append(f"| {kind} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default="../shared/data", help="the shared data folder")
  ap.add_argument("--work", default="/tmp/protjax_probe_bench",
                  help="cache for featurised HDF5 files and probes")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results", "probe_baselines.json"))
  ap.add_argument("--kinds", default="onehot,blosum62")
  ap.add_argument("--model", default="cnn", help="per-residue probe")
  ap.add_argument("--pooling", default="mean", choices=pdata.POOLINGS)
  ap.add_argument("--folds", type=int, default=5)
  ap.add_argument("--max-epochs", type=int, default=20)
  ap.add_argument("--patience", type=int, default=3)
  ap.add_argument("--batch-tokens", type=int, default=16384)
  ap.add_argument("--skip-ss", action="store_true")
  ap.add_argument("--skip-loc", action="store_true")
  args = ap.parse_args(argv)
  os.makedirs(args.work, exist_ok=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  ss_cfg = ptrain.TrainConfig(max_epochs=args.max_epochs, patience=args.patience,
                              batch_tokens=args.batch_tokens)
  loc_cfg = ptrain.TrainConfig(max_epochs=200, patience=10, batch_size=64)
  results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "python": platform.python_version()},
             "ss_config": dataclasses.asdict(ss_cfg), "loc_config": dataclasses.asdict(loc_cfg),
             "probe_model": args.model, "baselines": {}}
  t0 = time.time()
  for kind in args.kinds.split(","):
    print(f"== {kind}", flush=True)
    r = {}
    if not args.skip_loc:
      r["loc"] = run_loc(kind, args.data, args.work, loc_cfg, args.pooling, args.folds)
    if not args.skip_ss:
      r["ss"] = run_ss(kind, args.data, args.work, ss_cfg, args.model)
    results["baselines"][kind] = r
  results["total_seconds"] = time.time() - t0
  md = markdown(results)
  files.write_text_atomic(args.out, json.dumps(results, indent=1))
  files.write_text_atomic(os.path.splitext(args.out)[0] + ".md", md)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
