"""User-level embedding: `protjax-embed` end to end against the recipe ProtTrans users run.

The recipe is ProtTrans' `prott5_embedder.py` as its users run it: transformers'
`T5EncoderModel` and `T5Tokenizer`, sequences sorted longest first, batches cut
at 100 sequences or 4,000 residues (a protein over 1,000 residues alone),
each batch padded to its longest protein, per-residue slices and their means
written to HDF5. It is re-implemented here in the same steps (both outputs
from one forward) so that both sides run the same weights, precision and
FASTA in one process: random `--config` weights exported from protjax with
`protjax.export.export_hf`.

protjax's side is `protjax.embed.embed_fasta` with a built `Embedder` (what the
CLI runs after loading the model): read and validate, frame, pack, forward,
unpack, write both HDF5 files. Each side is warmed up once (protjax compiles
its handful of shapes; the recipe's first batch pays PyTorch's start-up), then
the repeats alternate, the load average is recorded beside each, and residues/s
are over real residues.

  python bench/embed_vs_prottrans.py --sample 300        # yeast proteins, small, float32
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"),
                 help="the shared data folder (default ../shared/data)")
  p.add_argument("--fasta", default=None,
                 help="proteins to embed (default: DATA/proteomes/yeast_s288c.fasta)")
  p.add_argument("--sample", type=int, default=300, help="random proteins drawn (0: all)")
  p.add_argument("--max_length", type=int, default=4000, help="longer proteins are dropped")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", default="small", help="ProtT5 size (random weights)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--token_budget", type=int, help="default: protjax-embed's")
  p.add_argument("--out_dir", default=os.path.join(HERE, "results"))
  return p.parse_args(argv)


def sample_fasta(path: str, n: int, seed: int, max_length: int, out: str) -> tuple[int, int]:
  """Writes `n` random proteins of `path` to `out`; returns (proteins, residues)."""
  from protjax.data.readers import read_fasta
  records = [r for r in read_fasta(path) if len(r[1]) <= max_length]
  if n and n < len(records):
    records = random.Random(seed).sample(records, n)
  with open(out, "w") as f:
    for rid, seq in records:
      f.write(f">{rid}\n{seq}\n")
  return len(records), sum(len(s) for _, s in records)


def read_recipe_fasta(path: str) -> dict[str, str]:
  """The recipe's reader: id = the header line, sequence lines joined, upper case."""
  sequences: dict[str, str] = {}
  with open(path) as f:
    for line in f:
      if line.startswith(">"):
        key = line[1:].strip().replace("/", "_").replace(".", "_")
        sequences[key] = ""
      else:
        sequences[key] += "".join(line.split()).upper().replace("-", "")
  return sequences


def prottrans_recipe(model, tokenizer, fasta: str, per_residue: str, per_protein: str,
                     max_residues: int = 4000, max_seq_len: int = 1000,
                     max_batch: int = 100) -> None:
  """prott5_embedder.py's loop: sorted, greedy batches, padded to the longest."""
  import h5py
  import torch
  records = sorted(read_recipe_fasta(fasta).items(), key=lambda kv: len(kv[1]), reverse=True)
  residue_out, protein_out = {}, {}
  batch = []
  for k, (rid, seq) in enumerate(records, 1):
    seq = seq.replace("U", "X").replace("Z", "X").replace("O", "X")
    batch.append((rid, " ".join(seq), len(seq)))
    in_batch = sum(n for _, _, n in batch) + len(seq)
    if (len(batch) >= max_batch or in_batch >= max_residues or k == len(records)
        or len(seq) > max_seq_len):
      ids, seqs, lengths = zip(*batch)
      batch = []
      encoded = tokenizer(list(seqs), add_special_tokens=True, padding="longest")
      input_ids = torch.tensor(encoded["input_ids"])
      mask = torch.tensor(encoded["attention_mask"])
      with torch.no_grad():
        hidden = model(input_ids, attention_mask=mask).last_hidden_state
      for row, (rid_, n) in enumerate(zip(ids, lengths)):
        emb = hidden[row, :n]
        residue_out[rid_] = emb.cpu().numpy()
        protein_out[rid_] = emb.mean(dim=0).cpu().numpy()
  for path, out in ((per_residue, residue_out), (per_protein, protein_out)):
    with h5py.File(path, "w") as f:
      for rid, emb in out.items():
        f.create_dataset(rid, data=emb)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  import torch
  import transformers
  from protjax import embed, export
  from protjax.models import registry

  work = tempfile.mkdtemp(prefix="embed_vs_prottrans_")
  fasta = os.path.join(work, "sample.fasta")
  source = args.fasta or os.path.join(args.data, "proteomes", "yeast_s288c.fasta")
  proteins, residues = sample_fasta(source, args.sample, args.seed, args.max_length, fasta)
  family = registry.get_family("prott5")
  config = family.get_config(args.config, dropout_rate=0.0, dtype="float32")
  params = family.encoder(config).init(jax.random.PRNGKey(args.seed),
                                       np.ones((1, 8), np.int32))["params"]
  params = jax.tree.map(np.asarray, params)
  hf_dir = export.export_hf(params, config, os.path.join(work, "hf"))
  model = transformers.T5EncoderModel.from_pretrained(hf_dir).eval()
  tokenizer = transformers.T5Tokenizer.from_pretrained(hf_dir, do_lower_case=False)
  embedder = embed.Embedder(params, config, model_name=f"random-{args.config}",
                            token_budget=args.token_budget)

  def run_protjax(tag):
    out = os.path.join(work, tag)
    embed.embed_fasta(embedder, fasta, per_residue=out + ".res.h5",
                      per_protein=out + ".prot.h5")
    return out

  def run_recipe(tag):
    out = os.path.join(work, tag)
    prottrans_recipe(model, tokenizer, fasta, out + ".res.h5", out + ".prot.h5")
    return out

  # Warm-up, and the two sides agree on every protein.
  a, b = run_protjax("warm_protjax"), run_recipe("warm_recipe")
  import h5py
  with h5py.File(a + ".res.h5") as fa, h5py.File(b + ".res.h5") as fb:
    diff = max(float(np.abs(fa[k][()] - fb[k.replace("/", "_").replace(".", "_")][()]).max())
               for k in fa)
  print(f"{proteins} proteins, {residues} residues; max |protjax - recipe| {diff:.2e}; "
        f"torch threads {torch.get_num_threads()}", flush=True)

  times = {"protjax-embed": [], "prottrans recipe": []}
  loads = []
  runners = {"protjax-embed": run_protjax, "prottrans recipe": run_recipe}
  for r in range(args.repeats):
    for name, run in runners.items():
      out = os.path.join(work, "timed")
      for suffix in (".res.h5", ".prot.h5"):
        if os.path.exists(out + suffix):
          os.remove(out + suffix)
      load = os.getloadavg()[0]
      t0 = time.perf_counter()
      run("timed")
      times[name].append(time.perf_counter() - t0)
      loads.append(load)
      print(f"repeat {r + 1}: {name} {times[name][-1]:.2f} s (load {load:.2f})", flush=True)

  rows = {name: {"seconds": ts, "seconds_median": statistics.median(ts),
                 "residues_per_s": residues / statistics.median(ts)}
          for name, ts in times.items()}
  ratio = rows["protjax-embed"]["residues_per_s"] / rows["prottrans recipe"]["residues_per_s"]
  print(f"\n| {'pipeline':<17} | {'median s':>8} | {'residues/s':>10} |")
  print(f"|{'-' * 19}|{'-' * 10}|{'-' * 12}|")
  for name, row in rows.items():
    print(f"| {name:<17} | {row['seconds_median']:8.2f} | {row['residues_per_s']:10.0f} |")
  print(f"\nprotjax-embed / ProtTrans recipe: {ratio:.2f}x (end to end, {args.config}, float32, "
        f"medians of {args.repeats}; load {min(loads):.2f}-{max(loads):.2f})")
  result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "config": args.config, "dtype": "float32", "fasta": source,
            "proteins": proteins, "residues": residues, "seed": args.seed,
            "token_budget": embedder.batching.token_budget, "max_abs_difference": diff,
            "results": rows, "protjax_over_recipe": ratio, "loadavg": loads,
            "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__}}
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, f"embed_vs_prottrans_{args.config}_float32.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {path}")
  shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
