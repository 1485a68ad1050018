"""Why does (or doesn't) a pretrained encoder beat the random one? Probes the
cached embeddings of an acid-test work dir three more ways.

  python bench/acid_diagnostics.py --work_dir /tmp/protjax_acid

For trained LM, random LM and one-hot features of the same NetSurfP-2.0
subset (train) and CB513 (test), all standardised per feature with the
training residues' mean and standard deviation:
1. residue identity from the features (multinomial logistic regression): is
   the identity kept?
2. DSSP3 from one residue's features (logistic regression, no window): how
   much secondary structure is linearly in a single position's vector?
3. DSSP3 from a window of +-3 residues (logistic regression on the
   concatenated 7 vectors): a linear stand-in for the CNN's window;
4. the paper's CNN probe (protjax.probes, same settings as the acid test) on
   standardised inputs (the acid test feeds raw embeddings, as the paper).
Scored on CB513 residues with disorder==1 and cb513_mask==1; 4. with the
bootstrap SE over proteins. Prints a table and writes `<work_dir>/diagnostics.json`
(or `--out`). What it showed on earlier runs: `bench/results/acid_findings.md`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from protjax import files  # noqa: E402
from protjax.probes import data as pdata  # noqa: E402
from protjax.probes import train as ptrain  # noqa: E402

KINDS = ("trained_lm", "random_lm", "onehot")
LABELS = {"trained_lm": "trained LM", "random_lm": "random LM (same shape)",
          "onehot": "one-hot (DeepOneHot)"}


def standardise(train: pdata.ResidueSet, *others: pdata.ResidueSet):
  """Per-feature z-scores with the training residues' statistics."""
  x = np.concatenate([f.astype(np.float32) for f in train.features])
  mean, std = x.mean(0), x.std(0) + 1e-6
  z = lambda s: dataclasses.replace(s, features=[(f.astype(np.float32) - mean) / std
                                                 for f in s.features])
  return (z(train),) + tuple(z(s) for s in others)


def window_matrix(data: pdata.ResidueSet, half: int, mask: str):
  """`[residues, (2*half+1)*dim]` windows (zero beyond the chain ends) and DSSP3 labels."""
  xs, ys = [], []
  for f, y, m in zip(data.features, data.dssp3, getattr(data, mask)):
    padded = np.pad(f, [(half, half), (0, 0)])
    xs.append(np.concatenate([padded[i:i + len(f)] for i in range(2 * half + 1)], 1)[m])
    ys.append(y[m])
  return np.concatenate(xs), np.concatenate(ys)


def linear_q3(train, test, half: int) -> float:
  xt, yt = window_matrix(train, half, "train_mask")
  xc, yc = window_matrix(test, half, "score_mask")
  model = LogisticRegression(max_iter=300, C=0.1).fit(xt, yt)
  return float(100 * model.score(xc, yc))


def identity_accuracy(train, test, train_seqs: dict, test_seqs: dict) -> float:
  """Residue letter from one position's vector (train residues -> CB513 residues)."""
  def xy(data, mask, seqs):
    x = np.concatenate([f[m] for f, m in zip(data.features, getattr(data, mask))])
    y = np.concatenate([np.array(list(seqs[i]))[m] for i, m in zip(data.ids, getattr(data, mask))])
    return x, y
  xt, yt = xy(train, "train_mask", train_seqs)
  xc, yc = xy(test, "score_mask", test_seqs)
  return float(100 * LogisticRegression(max_iter=300).fit(xt, yt).score(xc, yc))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--work_dir", required=True, help="an acid_test --work_dir after its probes")
  ap.add_argument("--kinds", default=",".join(KINDS))
  ap.add_argument("--ss_max_epochs", type=int, default=300)
  ap.add_argument("--ss_patience", type=int, default=10)
  ap.add_argument("--out", default=None, help="JSON path (default <work_dir>/diagnostics.json)")
  args = ap.parse_args(argv)
  w = args.work_dir
  ss = os.path.join(w, "probe_data", "secondary_structure")
  from protjax.data import readers  # pylint: disable=import-outside-toplevel
  sequences = {}
  for name in ("netsurfp2_train.csv.gz", "CB513.csv"):
    sequences[name] = {rid: seq for rid, seq, _ in
                       readers.read_netsurfp_csv(os.path.join(ss, name))}
  cfg = ptrain.TrainConfig(max_epochs=args.ss_max_epochs, patience=args.ss_patience,
                           batch_tokens=16384, seed=0)
  out = {}
  for kind in args.kinds.split(","):
    train = pdata.load_residue_set(os.path.join(w, "probes", f"{kind}_train.h5"),
                                   os.path.join(ss, "netsurfp2_train.csv.gz"))
    test = pdata.load_residue_set(os.path.join(w, "probes", f"{kind}_CB513.h5"),
                                  os.path.join(ss, "CB513.csv"), cb513=True)
    train, test = standardise(train, test)
    r = {"identity_accuracy": identity_accuracy(train, test, sequences["netsurfp2_train.csv.gz"],
                                                 sequences["CB513.csv"])}
    r["linear_q3_one_residue"] = linear_q3(train, test, 0)
    r["linear_q3_window7"] = linear_q3(train, test, 3)
    fit, val = ptrain.early_stopping_split(train, None, cfg)
    probe = ptrain.fit_residue(fit, val, model="cnn", config=cfg, progress=False)
    q3 = ptrain.evaluate_residue_set(probe, test)["Q3"]
    r["cnn_standardised_q3"] = {"accuracy": q3["accuracy"], "se": q3["se"],
                                "best_epoch": probe.meta["best_epoch"]}
    out[kind] = r
    print(f"{kind}: identity {r['identity_accuracy']:.1f}%, linear Q3 one residue "
          f"{r['linear_q3_one_residue']:.1f}, window 7 {r['linear_q3_window7']:.1f}; "
          f"standardised CNN Q3 {q3['accuracy']:.2f} +- {q3['se']:.2f}", flush=True)
  path = args.out or os.path.join(w, "diagnostics.json")
  files.write_text_atomic(path, json.dumps(out, indent=1))
  print(markdown(out))
  print(f"wrote {path}")
  return 0


def markdown(diag: dict) -> str:
  """The results as a Markdown table."""
  lines = ["| features | residue identity from one position | linear Q3, one residue | "
           "linear Q3, window of 7 | CNN Q3, standardised inputs |",
           "| --- | --- | --- | --- | --- |"]
  for kind, d in diag.items():
    c = d["cnn_standardised_q3"]
    lines.append(f"| {LABELS.get(kind, kind)} | {d['identity_accuracy']:.1f}% | "
                 f"{d['linear_q3_one_residue']:.1f} | {d['linear_q3_window7']:.1f} | "
                 f"{c['accuracy']:.1f} ± {c['se']:.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
