"""`protjax-probe`: baseline features, probe training and evaluation on frozen embeddings.

  protjax-probe featurize --kind onehot|blosum62 INPUT OUT.h5
      INPUT is a FASTA file or a NetSurfP-2.0 CSV (ids = the CSV's row indices,
      as every protjax reader of that format uses).
  protjax-probe train --task ss3ss8 --embeddings train.h5 --labels train.csv --out DIR
      [--model cnn|logreg|fnn|bilstm]
  protjax-probe train --task location --embeddings deeploc.h5
      --labels deeploc_train.fasta [--labels-csv labels.csv] --pooling mean --out DIR
      --labels and --embeddings repeat: DeepLoc's 10-class FASTA (bare ids, classes
      in its CSV) and its membrane-labelled FASTA in one run train both heads
      (a sequence in both is one protein with the labels of both);
      [--val-labels FASTA [--val-embeddings H5]] sets the early-stopping set.
  A probe folder that exists is refused unless --overwrite.
  protjax-probe eval --probe DIR --embeddings test.h5 --labels test.csv [--cb513]
      --out report.json            (also writes report.md)

Every path may be a gs:// URL (protjax.files): HDF5 inputs are read by
ranges, outputs written locally and uploaded (a probe folder's config.json last).

Bad input (label length != sequence length, embeddings of another model or
dimension, missing ids) ends with one `error: ...` line naming the file and
record, exit status 2, and no output file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from protjax.errors import InputError, cli_main
from protjax.files import write_text_atomic

TASK_ALIASES = {"ss3ss8": "ss3ss8", "ss": "ss3ss8", "secondary_structure": "ss3ss8",
                "location": "location", "localization": "location", "deeploc": "location"}


def _is_binary(head: str) -> bool:
  """Whether the start of a file is binary data (an HDF5 file or an archive
  given as input): a NUL, or more than a tenth of control characters and
  bytes that are not UTF-8 (one stray byte in a FASTA header is not)."""
  odd = sum(1 for c in head if (c < " " and c not in "\t\n\r\f\v") or "\udc80" <= c <= "\udcff")
  return "\x00" in head or odd > len(head) / 10


def _is_fasta(path: str) -> bool:
  """FASTA (first non-blank line starts with '>') or else a CSV; InputError
  for an empty file or binary data, which is neither."""
  from protjax.data import readers
  with readers.open_text(path) as f:
    head = f.read(4096)
  if _is_binary(head):
    raise InputError("is binary data, neither a FASTA nor a CSV file", path=path)
  for line in head.splitlines():
    if line.strip():
      return line.startswith(">")
  raise InputError("empty file", path=path)


def _featurize(args) -> int:
  from protjax import featurize
  from protjax.data import readers
  if _is_fasta(args.input):
    records = readers.read_fasta(args.input)
  else:
    records = ((rid, seq) for rid, seq, _ in readers.read_netsurfp_csv(args.input))
  n = featurize.featurize_records(args.kind, records, args.output, source=args.input)
  print(f"wrote {n} proteins ({args.kind}) to {args.output}", file=sys.stderr)
  return 0


def _config(args):
  from protjax.probes.train import TrainConfig
  kw = {}
  for name in ("learning_rate", "batch_tokens", "batch_size", "max_epochs", "patience",
               "val_fraction", "seed"):
    v = getattr(args, name)
    if v is not None:
      kw[name] = v
  return TrainConfig(standardize_residues=args.standardize_residues, **kw)


def _train(args) -> int:
  from protjax.probes import train as ptrain
  task = TASK_ALIASES.get(args.task)
  if task is None:
    raise InputError(f"unknown task {args.task!r}, expected ss3ss8 or location")
  ptrain.check_out_dir(args.out, args.overwrite)  # before any training
  if task == ptrain.RESIDUE_TASK:
    for flag, values in (("--embeddings", args.embeddings), ("--labels", args.labels),
                         ("--labels-csv", args.labels_csv or [None])):
      if len(values) > 1:
        raise InputError(f"{flag} is given once for ss3ss8 (several label files are for "
                         "location)")
    if args.val_labels_csv:
      raise InputError("--val-labels-csv is for location (DeepLoc FASTAs with bare ids)")
    probe = ptrain.train_residue_probe(
        args.embeddings[0], args.labels[0], out_dir=args.out, model=args.model or "cnn",
        config=_config(args), val_embeddings=args.val_embeddings,
        val_labels=args.val_labels, progress=not args.quiet, overwrite=args.overwrite)
  else:
    exclude = []
    for path in args.exclude_fasta or ():
      from protjax.data import readers
      exclude += [seq for _, seq in readers.read_fasta(path)]
    probe = ptrain.train_protein_probe(
        args.embeddings, args.labels, args.labels_csv, out_dir=args.out,
        model=args.model or "fnn", pooling=args.pooling, config=_config(args),
        exclude_sequences=exclude, val_embeddings=args.val_embeddings,
        val_fasta=args.val_labels, val_labels_csv=args.val_labels_csv,
        progress=not args.quiet, overwrite=args.overwrite)
    if probe.meta["n_duplicates_merged"]:
      print(f"note: {probe.meta['n_duplicates_merged']} proteins given twice (same sequence) "
            "were merged; labels that disagreed: location "
            f"{probe.meta['n_conflicting_location']}, membrane "
            f"{probe.meta['n_conflicting_membrane']}", file=sys.stderr)
    if probe.meta["n_train_membrane_labels"] == 0:
      print("note: no membrane labels (M/S) in the training set: the membrane head "
            "is untrained and eval will not report Q2", file=sys.stderr)
  last = probe.meta["history"][probe.meta["best_epoch"] - 1]
  print(f"saved {task} probe ({probe.meta['model']}) to {args.out}: best epoch "
        f"{probe.meta['best_epoch']}, validation loss {last['val_loss']:.4f}",
        file=sys.stderr)
  return 0


def _eval(args) -> int:
  from protjax.probes import train as ptrain
  probe = ptrain.load_probe(args.probe)
  if args.cb513 and probe.task != ptrain.RESIDUE_TASK:
    raise InputError("--cb513 applies to ss3ss8 probes only", path=args.probe)
  report = ptrain.evaluate(probe, args.embeddings, args.labels, labels_csv=args.labels_csv,
                           cb513=args.cb513, n_resamples=args.bootstrap)
  md = ptrain.report_markdown(report)
  md_path = os.path.splitext(args.out)[0] + ".md"
  write_text_atomic(args.out, json.dumps(report, indent=1))
  write_text_atomic(md_path, md)
  print(md)
  return 0


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog="protjax-probe", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)

  f = sub.add_parser("featurize", help="one-hot / BLOSUM62 rows per residue, as HDF5 "
                     "embeddings (DeepOneHot / DeepBLOSUM62 baselines)")
  f.add_argument("--kind", required=True, choices=("onehot", "blosum62"))
  f.add_argument("input", help="FASTA or NetSurfP-2.0 CSV (.gz accepted)")
  f.add_argument("output", help="HDF5 file to write (atomically; resumes a .partial)")
  f.set_defaults(func=_featurize)

  t = sub.add_parser("train", help="train a probe with early stopping")
  t.add_argument("--task", required=True,
                 help="ss3ss8 (per-residue DSSP3 + DSSP8) or location (DeepLoc "
                 "10 locations + membrane/soluble)")
  t.add_argument("--embeddings", required=True, action="append",
                 help="HDF5 embeddings of the training set (location: repeatable, one "
                 "per --labels in the same order, or one for all)")
  t.add_argument("--labels", required=True, action="append",
                 help="NetSurfP CSV (ss3ss8) or DeepLoc FASTA (location: repeatable, "
                 "proteins with the same sequence are merged)")
  t.add_argument("--labels-csv", action="append",
                 help="location: Label,Class CSV for bare FASTA ids (repeatable)")
  t.add_argument("--out", required=True, help="probe folder to write")
  t.add_argument("--overwrite", action="store_true", help="replace an existing --out probe")
  t.add_argument("--model", help="ss3ss8: cnn (default), logreg, fnn, bilstm; location: fnn")
  t.add_argument("--pooling", default="mean", choices=("mean", "min", "max", "concat"),
                 help="location: pooling over residues (concat = min, max, mean)")
  t.add_argument("--exclude-fasta", action="append",
                 help="location: drop training proteins whose sequence occurs in this "
                 "FASTA (e.g. the test set; DeepLoc's files overlap); repeatable")
  t.add_argument("--val-embeddings", help="HDF5 of a separate validation set (default: "
                 "the first --embeddings)")
  t.add_argument("--val-labels", help="a separate validation set: NetSurfP CSV (ss3ss8) or "
                 "DeepLoc FASTA (location; its sequences are left out of training) "
                 "(default: hold out --val-fraction of the training set)")
  t.add_argument("--val-labels-csv", help="location: Label,Class CSV for --val-labels")
  t.add_argument("--learning-rate", type=float)
  t.add_argument("--batch-tokens", type=int, help="ss3ss8: padded residues per batch")
  t.add_argument("--batch-size", type=int, help="location: proteins per batch")
  t.add_argument("--max-epochs", type=int)
  t.add_argument("--patience", type=int, help="epochs without a better validation loss")
  t.add_argument("--val-fraction", type=float)
  t.add_argument("--seed", type=int)
  t.add_argument("--standardize-residues", action="store_true",
                 help="ss3ss8: standardise each embedding feature with the training "
                 "residues' mean and SD, kept with the probe (default: raw features, "
                 "as the paper; location inputs are always standardised)")
  t.add_argument("--quiet", action="store_true", help="no progress bar")
  t.set_defaults(func=_train)

  e = sub.add_parser("eval", help="score a probe: Q3/Q8 or Q10/Q2 with bootstrap SEs")
  e.add_argument("--probe", required=True, help="probe folder from `train`")
  e.add_argument("--embeddings", required=True)
  e.add_argument("--labels", required=True, help="NetSurfP CSV or DeepLoc FASTA")
  e.add_argument("--labels-csv", help="location: Label,Class CSV for bare FASTA ids")
  e.add_argument("--cb513", action="store_true",
                 help="score only residues with cb513_mask == 1 (CB513 rule)")
  e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
  e.add_argument("--out", required=True, help="report JSON (a .md table is written beside it)")
  e.set_defaults(func=_eval)
  return ap


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  main()
