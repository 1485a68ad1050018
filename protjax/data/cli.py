"""`protjax-data`: show what the pretraining pipeline feeds the model.

    protjax-data --task protjax_sample_t5 --split train --length 512 --num 3

prints a few examples decoded back to residues: the masked input (masked
residues shown as `<extra_id_0>` for ProtT5, `[MASK]` for ProtBert) and the
target, plus the masking rate. Bad input (unknown task, missing or malformed
FASTA) gives a one-line `error: ...` and exit status 2.

    protjax-data prepare --input 'FASTA glob' --output DIR

converts FASTA once into a prepared corpus (`protjax.data.prepared`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from protjax.errors import InputError, cli_main


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="protjax-data", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      epilog="Tasks are {corpus}_{objective}: corpus protjax_sample (bundled), uniref50, "
             "uniref100, bfd (these need --source); objective t5, bert, electra.")
  p.add_argument("--task", default="protjax_sample_t5", help="registered seqio task")
  p.add_argument("--split", default="train", choices=("train", "validation"))
  p.add_argument("--length", type=int, default=512,
                 help="tokens per example, including </s> (or [CLS]/[SEP])")
  p.add_argument("--num", type=int, default=3, help="examples to print")
  p.add_argument("--seed", type=int, default=0, help="data seed (order, crops, masks)")
  p.add_argument("--step", type=int, default=0, help="global step to show (masks depend on it)")
  p.add_argument("--pack", action="store_true", help="pack several proteins per example")
  p.add_argument("--length-policy", default="crop", choices=("crop", "drop"),
                 help="what to do with proteins longer than --length")
  p.add_argument("--source", nargs="+", default=None, metavar="FASTA",
                 help="FASTA files or globs (plain or .gz) overriding the task's corpus")
  return p


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["prepare"]:  # a subcommand with its own flags, parsed in its module
    from protjax.data import prepared  # pylint: disable=import-outside-toplevel
    return prepared.prepare_main(argv[1:])
  args = _parser().parse_args(argv)
  if args.num < 1 or args.length < 3:
    raise InputError("--num must be >= 1 and --length >= 3")
  from protjax import tf_setup  # pylint: disable=import-outside-toplevel
  tf_setup.import_tensorflow()  # TF start-up chatter hides the output
  from protjax.data import config, pipeline  # pylint: disable=import-outside-toplevel
  spec = pipeline.get_spec(args.task)
  vocab = spec.objective.vocabulary
  batches = config.get_dataset(
      args.task, split=args.split, sequence_length=args.length, batch_size=args.num,
      seed=args.seed, start_step=args.step, pack=args.pack, repeat=args.split == "train",
      length_policy=args.length_policy, source_files=args.source)
  batch = next(batches)
  inputs = batch["encoder_input_tokens"]
  targets = batch.get("decoder_target_tokens", batch.get("encoder_target_tokens"))
  residues = np.isin(targets, vocab.residue_ids)
  masked = (inputs != targets) | (inputs == vocab.mask_id)
  for i in range(args.num):
    n = int(residues[i].sum())
    print(f"# example {i}: {n} residues, {int((masked[i] & residues[i]).sum())} masked")
    print(f"input:  {vocab.decode(inputs[i].tolist())}")
    print(f"target: {vocab.decode(targets[i].tolist())}")
  rate = (masked & residues).sum() / max(1, residues.sum())
  print(f"# task {args.task} split {args.split} step {args.step}: masked {rate:.3f} of residues")
  return 0


if __name__ == "__main__":
  main()
