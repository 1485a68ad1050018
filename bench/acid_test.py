"""The end-to-end acid test: does a small protein LM pretrained here beat chance?

  python bench/acid_test.py --data ../shared/data                      # ProtT5
  python bench/acid_test.py --data ../shared/data --family protbert    # ProtBert

One command, five stages (each cached in `--work_dir`, so a rerun resumes):

1. pretrain: the family's acid-test model (`gin_configs/models/<family>_mini_wide.gin`,
   then its run gin `gin_configs/runs/acid_test_<family>.gin`, whose settings
   apply to any size; ProtT5's is `acid_test.gin`) with the family's
   objective on the FASTA files in `<data>/pretraining/`; 5% of the sequences
   (by id hash, `DataConfig.validation_fraction`) are held out. Training stops
   at `train.train_steps` or, as a safety net on a slower or busier machine,
   at `--train_minutes` of wall clock (the trainer's `max_minutes`: it saves
   a checkpoint and returns; rerunning the command resumes from it). Then the
   masked-residue accuracy and loss of the final parameters are measured on
   the whole held-out split, beside the family's random init of the same
   config and the best constant guess.
2. export: the trained encoder, and the random encoder of the same shape (the
   paper's random-projection control), as protjax params checkpoints
   (`protjax.export.save_params_checkpoint`); the trained encoder also as a
   Hugging Face directory (`export_hf`).
3. embed (`protjax.embed`, per-residue HDF5, float16 storage): the
   NetSurfP-2.0 training set (all 10,792 chains by default, as the paper's
   probes; `--ss_train_chains` subsamples it), CB513, TS115, a subsample of
   the DeepLoc training file (`--loc_train_proteins`, drawn after removing
   every sequence that also occurs in the validation file) and the whole
   DeepLoc validation file, with both encoders.
4. probe: for trained LM, random LM, one-hot and BLOSUM62 features, the
   per-residue CNN (Q3/Q8 on CB513 and TS115) and the per-protein FNN
   (Q10/Q2 on the DeepLoc validation file by k-fold cross-validation), with
   exactly the procedure of `bench/probe_baselines.py` (its `run_ss` /
   `run_loc`). Plus the pooling comparison (mean / min / max / concat) on
   DeepLoc with the trained LM (the paper's Table 10).
5. report: `<out>/<name>.md` and `.json`, `<name>_pretraining.png` (loss and
   masked-residue accuracy curves) and `<name>_tsne.png` (t-SNE of per-protein
   embeddings of the DeepLoc validation proteins, coloured by location,
   random LM beside trained LM, as the paper's Fig. 4). `<name>` is
   `acid_test` for ProtT5, `acid_test_<family>` for the others.

Everything after the trainer goes through the family registry
(`protjax.models.registry`), `protjax.export` and `protjax.embed`: no stage
knows which family it runs.

The acid-test criterion: trained-LM CB513 Q3 minus random-LM CB513 Q3 is
more than twice the combined standard error sqrt(se_trained^2 + se_random^2)
(bootstrap over proteins). The report adds a paired comparison (both probes
on the same bootstrap resamples) for context. What earlier runs found, and
the two scripts that read a work dir afterwards (`acid_probe_seeds.py`,
`acid_diagnostics.py`): `bench/results/acid_findings.md`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

import probe_baselines as pb  # noqa: E402  (bench/probe_baselines.py)
from protjax import files  # noqa: E402
from protjax.data import readers  # noqa: E402
from protjax.probes import data as pdata  # noqa: E402
from protjax.probes import train as ptrain  # noqa: E402

SS, LOC = pb.SS, pb.LOC
GIN_DIR = os.path.join(REPO, "gin_configs")
# Each family's acid-test run is gin_configs/models/<family>_mini_wide.gin, then
# gin_configs/runs/acid_test_<family>.gin, reported as acid_test_<family>; the
# model sizes are comparable (about 1.2-1.4M parameters in the layers) and the
# run gins budget about the same wall clock on 2 CPU cores. ProtT5's, the
# first, keep their first names.
FIRST_NAMES = {"prott5": "acid_test"}
# What each pretraining objective (the task name's suffix) asks of the model.
OBJECTIVES = {
    "t5": "ProtT5's: each residue → `<extra_id_0>` with probability 0.15, the decoder "
          "rebuilds the whole sequence (cross-entropy + 1e-4 z-loss over every target)",
    "bert": "BERT's: 15% of the residues selected, of those 80% → `[MASK]`, 10% a random "
            "standard residue, 10% kept; the MLM head predicts the selected ones "
            "(cross-entropy over them). The masked-residue accuracy counts every selected "
            "residue, the 10% left in place included: not the same figure as ProtT5's",
    "electra": "ELECTRA's: 25% of the residues selected and masked as BERT's; the generator "
               "predicts them, the discriminator tells its samples from the originals at "
               "every position (loss: generator + weight × discriminator); the "
               "masked-residue accuracy is the generator's",
    "xlnet": "XLNet's permutation LM: a random factorisation order per protein, the last "
             "1/6 of it predicted by the query stream from the positions before it in the "
             "order (cross-entropy over them); the masked-residue accuracy is over those "
             "predicted positions",
}
LM_KINDS = ("trained_lm", "random_lm")
BASELINE_KINDS = ("onehot", "blosum62")
KIND_LABELS = {"trained_lm": "trained LM", "random_lm": "random LM (same shape)",
               "onehot": "one-hot (DeepOneHot)", "blosum62": "BLOSUM62 (DeepBLOSUM62)"}
POOLINGS = ("mean", "min", "max", "concat")
# ProtT5-XL-U50 + the same probes (the data README): the scale a large LM reaches.
PAPER = {"CB513": {"Q3": 86.0, "Q8": 74.0}, "TS115": {"Q3": 87.0, "Q8": 77.0},
         "DeepLoc": {"Q10": 81.0, "Q2": 91.0}}
STAGES = ("pretrain", "export", "probe_data", "embed", "probes")


# --------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------
def _log(msg: str) -> None:
  print(f"[acid {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json_atomic(path: str, obj: Any) -> None:
  files.write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=_jsonable))


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON-able: {type(x)}")


def _cached(path: str, fn, *args, **kwargs):
  """Runs `fn` unless its JSON result is already at `path` (resumable stages)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  out = fn(*args, **kwargs)
  write_json_atomic(path, out)
  with open(path) as f:  # the same types a rerun would see
    return json.load(f)


def _git(*args: str) -> str:
  return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                        check=False).stdout.strip()


def machine() -> dict:
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "cpus": os.cpu_count(), "hostname": platform.node()}
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    info["cpu_model"] = names[0] if names else None
  except OSError:
    pass
  try:
    info["load_average_at_start"] = list(os.getloadavg())
  except OSError:
    pass
  try:
    import jax
    info["jax"] = jax.__version__
    info["jax_backend"] = jax.default_backend()
    info["jax_device_count"] = jax.device_count()
  except Exception as e:  # pylint: disable=broad-except
    info["jax"] = f"unavailable: {e}"
  try:
    info["git_commit"] = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    info["git_dirty_files"] = [l[3:] for l in dirty.splitlines()]
  except OSError:
    pass
  return info


# --------------------------------------------------------------------------
# Stage 1: pretraining.
# --------------------------------------------------------------------------
def pretraining_files(data_dir: str) -> list[str]:
  d = os.path.join(data_dir, "pretraining")
  found = sorted(os.path.join(d, f) for f in os.listdir(d)
                 if f.endswith((".fasta", ".fa", ".fasta.gz", ".fa.gz")))
  if not found:
    raise SystemExit(f"no FASTA files in {d}")
  return found


def missing_data(data_dir: str) -> list[str]:
  """The files under --data that the stages read and that are not there."""
  need = [os.path.join(SS, n) for n in ("CB513.csv", "TS115.csv", "netsurfp2_train.csv.gz")]
  need += [os.path.join(LOC, n) for n in ("deeploc_val_membrane.fasta",
                                          "deeploc_train_10class_labels.csv",
                                          "deeploc_train_10class.fasta")]
  return [n for n in ["pretraining"] + need if not os.path.exists(os.path.join(data_dir, n))]


def _parse_gin(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  import gin
  from protjax import gin_setup
  gin.clear_config()
  for path in (os.getcwd(), REPO):
    gin.add_config_file_search_path(path)
  gin_setup.parse_gin(list(gin_files), list(bindings), finalize=False)


def _data_config():
  import gin
  from protjax.data.config import DataConfig
  return gin.get_configurable(DataConfig)()


def random_params(family: str, config, batch_shapes: dict, seed: int) -> dict:
  """The family's initialisation of `config` (full tree, head included): the
  random-LM control, the same shape as the trained model."""
  import jax
  from protjax.models import registry
  model = registry.get_model(family, config)
  shapes = {k: tuple(v) for k, v in batch_shapes.items()}
  return model.init_variables(jax.random.PRNGKey(seed), shapes)["params"]


def _scored_positions(batch: dict, model=None) -> tuple[np.ndarray, np.ndarray]:
  """Where a batch's masked-residue accuracy is scored, and the targets there.

  The positions the objective masked: encoder-only features mark them with
  their loss weights (BERT's kept and randomised residues included); in a
  full reconstruction they are where the input differs from its aligned
  target; an objective that picks its targets on the device (ProtXLNet's
  permutation) says where its evaluation loss predicts (`scored_positions`).
  """
  own = getattr(model, "scored_positions", None)
  if own is not None:
    return own(batch)
  if "encoder_loss_weights" in batch:
    return batch["encoder_loss_weights"] > 0, batch["encoder_target_tokens"]
  targets = batch["decoder_target_tokens"]
  return (batch["encoder_input_tokens"] != targets) & (targets > 0), targets


def heldout_eval(model, params_sets: Sequence[dict], data_cfg, max_batches: int = 1000
                 ) -> list[dict]:
  """Deterministic loss and masked-residue accuracy over the whole held-out
  split, for each parameter set (one pass over the data, one compilation).

  Also the accuracy of the best constant guess (the residue most frequent at
  the masked positions of this split: an upper bound for a frequency-only model).
  """
  import jax
  step = jax.jit(lambda p, b: model.loss_fn(p, b, None)[1])
  keys = ("loss", "cross_entropy", "accuracy")
  tot = [dict.fromkeys(keys, 0.0) for _ in params_sets]
  correct = [0.0 for _ in params_sets]
  n_tok, n_masked, n_seq = 0.0, 0, 0
  counts = np.zeros(model.config.vocab_size, np.int64)
  for i, batch in enumerate(data_cfg.get_dataset("validation", repeat=False)):
    if i >= max_batches:
      break
    masked, targets = _scored_positions(batch, model)
    nm = int(masked.sum())
    for j, params in enumerate(params_sets):
      m = jax.device_get(step(params, batch))
      w = float(m["num_tokens"])
      for k in keys:
        tot[j][k] += w * float(m[k])
      if nm:  # (a batch without masked positions may report 0/0)
        correct[j] += float(m["masked_residue_accuracy"]) * nm
    n_tok += w
    n_masked += nm
    counts += np.bincount(targets[masked], minlength=len(counts))
    inputs = batch.get("encoder_input_tokens", batch.get("decoder_input_tokens"))
    n_seq += int((inputs > 0).any(1).sum())  # rows, for a stream
  return [{**{k: v / max(n_tok, 1.0) for k, v in t.items()},
           "masked_residue_accuracy": c / max(n_masked, 1), "masked_positions": n_masked,
           "target_tokens": n_tok, "sequences": n_seq,
           "best_constant_accuracy": float(counts.max() / max(n_masked, 1))}
          for t, c in zip(tot, correct)]


def pretrain(args, work: str) -> dict:
  """Trains (or resumes) the family's acid-test model; returns curves, steps
  and held-out scores."""
  import gin
  from protjax import export, trainer
  from protjax.models import registry

  model_dir = os.path.join(work, "pretrain")
  corpus = pretraining_files(args.data)
  bindings = [f"train.model_dir = {model_dir!r}",
              f"DataConfig.source_files = {tuple(corpus)!r}",
              f"DataConfig.backend = {args.data_backend!r}",
              f"get_model.family = {args.family!r}"] + list(args.gin)
  config_class = registry.get_family(args.family).config_class
  _parse_gin([args.model_gin], [])
  if not re.search(rf"^{config_class}\.", gin.config_str(), re.M):
    # Else the run gin would build its config class's defaults: the paper size.
    raise SystemExit(f"--model_gin {args.model_gin} binds no {config_class}: not a "
                     f"{args.family} model")
  gin_files = [args.model_gin, args.gin_file]  # the run file overrides the model file
  _parse_gin(gin_files, bindings)
  t0 = time.time()
  _log(f"pretraining {args.family} into {model_dir} (budget {args.train_minutes} min)")
  result = gin.get_configurable(trainer.train)(config_str=gin.config_str(),
                                               max_minutes=args.train_minutes)
  train_seconds = time.time() - t0
  if result.stopped == "preempted":
    # Not a finished stage (the budget's stop is): leave it uncached, so the
    # same command resumes from the checkpoint.
    raise SystemExit(f"pretraining stopped at step {result.step} by SIGTERM; run the same "
                     "command again to resume")
  config_str = gin.config_str()
  data_cfg = _data_config()
  gin.clear_config()
  run = export.load_training_run(model_dir)
  if run.family.name != args.family:
    raise SystemExit(f"--family {args.family} but the run in {model_dir} is {run.family.name}")
  _log(f"pretraining stopped at step {result.step} after {train_seconds / 60:.1f} min; "
       "held-out evaluation")
  model = registry.get_model(args.family, run.config)
  first = next(iter(data_cfg.get_dataset("validation", repeat=False)))
  batch_shapes = {k: list(v.shape) for k, v in first.items()}
  rand = random_params(args.family, run.config, batch_shapes, args.random_seed)
  heldout, heldout_random = heldout_eval(model, [run.params, rand], data_cfg)
  _log(f"held-out masked-residue accuracy {100 * heldout['masked_residue_accuracy']:.2f}% "
       f"(random init {100 * heldout_random['masked_residue_accuracy']:.2f}%, best constant "
       f"{100 * heldout['best_constant_accuracy']:.2f}%), loss {heldout['loss']:.4f}")
  history = {str(s): {k: m[k] for k in ("loss", "masked_residue_accuracy", "accuracy",
                                         "learning_rate", "grad_norm") if k in m}
             for s, m in sorted(result.history.items())}
  total, encoder = run.family.module().param_count(run.config)
  return {
      "family": args.family, "model_dir": model_dir, "files": corpus, "gin_files": gin_files,
      "bindings": bindings, "config_str": config_str,
      "model_config": dataclasses.asdict(run.config), "data_config": dataclasses.asdict(data_cfg),
      "batch_shapes": batch_shapes,
      "param_count": {"total": int(total), "encoder": int(encoder)},
      "start_step": result.start_step, "final_step": result.step,
      "stopped_by_budget_at": result.step if result.stopped == "time_limit" else None,
      "train_minutes_budget": args.train_minutes, "train_seconds": train_seconds,
      "history": history,
      "eval_history": {str(s): m for s, m in sorted(result.eval_history.items())},
      "heldout": heldout, "heldout_random_init": heldout_random,
  }


def whole_run(pre: dict) -> dict:
  """`pre` with the figures of the whole run, not only of the invocation that wrote it.

  A run stopped by its budget or a kill and started again resumes from its
  last checkpoint; `pre` (the trainer's result) covers that last invocation.
  The model dir's event files cover every invocation: from them come the
  step the run started at, the earlier invocations' training time, the
  evaluations of all, and the logged training means before this one.
  """
  from protjax import trainer
  logdir = os.path.join(pre["model_dir"], "tensorboard")
  log = trainer.read_run_log(logdir) if os.path.isdir(logdir) else None
  if log is None or log.start_step is None:
    return dict(pre, run_start_step=pre["start_step"], invocations=1,
                earlier_invocations_seconds=0.0, earlier_history={})
  evals = {}
  for tag, by_step in log.scalars.items():
    if tag.startswith("eval/"):
      for s, v in by_step.items():
        evals.setdefault(s, {})[tag[len("eval/"):]] = v
  earlier = {}
  for key in ("loss", "masked_residue_accuracy", "accuracy"):
    for s, v in log.scalars.get(f"train/{key}", {}).items():
      if s <= pre["start_step"]:
        earlier.setdefault(str(s), {})[key] = v
  return dict(pre, run_start_step=min(log.start_step, pre["start_step"]),
              invocations=len(log.invocation_seconds),
              earlier_invocations_seconds=float(sum(log.invocation_seconds[:-1])),
              eval_history={str(s): evals[s] for s in sorted(evals)},
              earlier_history=dict(sorted(earlier.items(), key=lambda kv: int(kv[0]))))


# --------------------------------------------------------------------------
# Stage 2: export.
# --------------------------------------------------------------------------
def export_encoders(args, work: str, pre: dict) -> dict:
  from protjax import export
  run = export.load_training_run(pre["model_dir"])
  enc = lambda name: os.path.join(work, "encoders", name)
  out = {"trained_lm": export.save_params_checkpoint(
      enc("trained_lm"), run.params, run.config, kind="encoder", overwrite=True)}
  rand = random_params(pre["family"], run.config, pre["batch_shapes"], args.random_seed)
  out["random_lm"] = export.save_params_checkpoint(enc("random_lm"), rand, run.config,
                                                   kind="encoder", overwrite=True)
  try:
    out["trained_lm_hf"] = export.export_hf(run.params, run.config, enc("trained_lm_hf"),
                                            "float32", kind="encoder", overwrite=True)
  except Exception as e:  # pylint: disable=broad-except
    # The HF copy is a by-product; the run embeds from the params checkpoint.
    out["trained_lm_hf_error"] = f"{e.__class__.__name__}: {e}"
  out["random_seed"] = args.random_seed
  out["layer_embedded"] = run.family.layer_embedded
  return out


# --------------------------------------------------------------------------
# Stage 3: probe data subsets and embeddings.
# --------------------------------------------------------------------------
def _fasta_records(path: str) -> list[tuple[str, list[str]]]:
  """(header line, sequence lines) of every record, verbatim."""
  recs, header, lines = [], None, []
  with readers.open_text(path) as f:
    for line in f:
      line = line.rstrip("\n")
      if line.startswith(">"):
        if header is not None:
          recs.append((header, lines))
        header, lines = line, []
      elif header is not None:
        lines.append(line)
  if header is not None:
    recs.append((header, lines))
  return recs


def _link(src: str, dst: str) -> None:
  if os.path.lexists(dst):
    os.remove(dst)
  os.symlink(os.path.abspath(src), dst)


def make_probe_data(args, work: str) -> dict:
  """A data folder in probe_baselines' layout with the training files subsampled.

  Test files (CB513, TS115, the DeepLoc validation file) are linked unchanged.
  """
  root = os.path.join(work, "probe_data")
  ss_dir, loc_dir = os.path.join(root, SS), os.path.join(root, LOC)
  os.makedirs(ss_dir, exist_ok=True)
  os.makedirs(loc_dir, exist_ok=True)
  rng = np.random.default_rng(args.seed)
  src_ss, src_loc = os.path.join(args.data, SS), os.path.join(args.data, LOC)
  for name in ("CB513.csv", "TS115.csv"):
    _link(os.path.join(src_ss, name), os.path.join(ss_dir, name))
  # NetSurfP-2.0 training chains: a random subset, original rows verbatim.
  with readers.open_text(os.path.join(src_ss, "netsurfp2_train.csv.gz")) as f:
    rows = list(csv.reader(f))
  header, body = rows[0], rows[1:]
  n_ss = len(body) if args.ss_train_chains <= 0 else min(args.ss_train_chains, len(body))
  keep = np.sort(rng.choice(len(body), n_ss, replace=False))
  tmp = os.path.join(ss_dir, "netsurfp2_train.csv.gz.tmp")
  with gzip.open(tmp, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(body[i] for i in keep)
  os.replace(tmp, os.path.join(ss_dir, "netsurfp2_train.csv.gz"))
  # DeepLoc: drop training sequences that occur in the validation file first
  # (probe_baselines drops them anyway), then subsample.
  val_fa = os.path.join(src_loc, "deeploc_val_membrane.fasta")
  _link(val_fa, os.path.join(loc_dir, "deeploc_val_membrane.fasta"))
  _link(os.path.join(src_loc, "deeploc_train_10class_labels.csv"),
        os.path.join(loc_dir, "deeploc_train_10class_labels.csv"))
  val_seqs = {s for _, s in readers.read_fasta(val_fa)}
  train_fa = os.path.join(src_loc, "deeploc_train_10class.fasta")
  seqs = [s for _, s in readers.read_fasta(train_fa)]
  recs = _fasta_records(train_fa)
  if len(recs) != len(seqs):
    raise SystemExit(f"{train_fa}: {len(recs)} headers but {len(seqs)} records read")
  fresh = [i for i, s in enumerate(seqs) if s not in val_seqs]
  n_loc = len(fresh) if args.loc_train_proteins <= 0 else min(args.loc_train_proteins,
                                                               len(fresh))
  pick = np.sort(rng.choice(fresh, n_loc, replace=False))
  files.write_text_atomic(
      os.path.join(loc_dir, "deeploc_train_10class.fasta"),
      "".join(recs[i][0] + "\n" + "".join(l + "\n" for l in recs[i][1]) for i in pick))
  res_count = lambda ids, lens: int(sum(lens[i] for i in ids))
  return {"dir": root, "seed": args.seed,
          "netsurfp_train_chains": {"used": int(n_ss), "of": len(body),
                                    "residues": res_count(keep, [len(r[0].split()) for r in body])},
          "deeploc_train": {"used": int(n_loc), "of": len(seqs),
                            "not_in_validation_file": len(fresh),
                            "residues": res_count(pick, [len(s) for s in seqs])},
          "deeploc_val": {"proteins": len(val_seqs)}}


def _csv_to_fasta(csv_path: str, fasta_path: str) -> None:
  """The chains of a NetSurfP CSV as FASTA, ids = the readers' ids (row index)."""
  files.write_text_atomic(fasta_path, "".join(
      f">{rid}\n{seq}\n" for rid, seq, _ in readers.read_netsurfp_csv(csv_path)))


def forget_trained_lm(work: str) -> None:
  """Deletes what an earlier pretraining left downstream (the trained LM's
  export, embeddings, probes and the later stages' caches), before pretraining
  runs again (resumed after a kill, or restarted): those caches would
  otherwise be reused for a model they no longer describe. The random LM's
  and the baselines' files do not depend on the training and stay."""
  import glob
  patterns = [f"stage_{s}{suffix}" for s in ("export", "embed", "probes")
              for suffix in (".json", ".time.json")]
  patterns += ["encoders/trained_lm*", "probes/trained_lm_*", "probes/probe_trained_lm_*",
               "results/*_trained_lm*"]
  for pattern in patterns:
    for path in glob.glob(os.path.join(work, pattern)):
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def embed_probe_data(args, work: str, probe_data: dict, encoders: dict) -> dict:
  """Per-residue HDF5 of every probe file, named as probe_baselines caches them."""
  from protjax import embed
  probes_work = os.path.join(work, "probes")
  fasta_dir = os.path.join(work, "probe_fasta")
  os.makedirs(probes_work, exist_ok=True)
  os.makedirs(fasta_dir, exist_ok=True)
  root = probe_data["dir"]
  inputs = {}
  for key, name in (("train", "netsurfp2_train.csv.gz"), ("CB513", "CB513.csv"),
                    ("TS115", "TS115.csv")):
    fa = os.path.join(fasta_dir, f"ss_{key}.fasta")
    if not os.path.exists(fa):
      _csv_to_fasta(os.path.join(root, SS, name), fa)
    inputs[key] = fa
  inputs["deeploc_train"] = os.path.join(root, LOC, "deeploc_train_10class.fasta")
  inputs["deeploc_val"] = os.path.join(root, LOC, "deeploc_val_membrane.fasta")
  out = {}
  for kind in LM_KINDS:
    embedder = embed.Embedder.from_directory(encoders[kind], model_name=f"acid_{kind}",
                                             storage_dtype="float16",
                                             token_budget=args.embed_token_budget)
    out[kind] = {}
    for key, fa in inputs.items():
      h5 = os.path.join(probes_work, f"{kind}_{key}.h5")
      if os.path.exists(h5):
        out[kind][key] = {"path": h5, "cached": True}
        continue
      summary = embed.embed_fasta(embedder, fa, per_residue=h5)
      _log(f"embedded {summary['embedded']} proteins ({summary['residues']} residues) of "
           f"{key} with {kind} in {summary['seconds']:.0f}s "
           f"({summary['residues'] / max(summary['seconds'], 1e-9):.0f} residues/s)")
      out[kind][key] = dict(summary, path=h5)
  out["options"] = {"storage_dtype": "float16", "token_budget": args.embed_token_budget}
  return out


# --------------------------------------------------------------------------
# Stage 4: probes (probe_baselines' procedure for every feature kind).
# --------------------------------------------------------------------------
def probe_configs(args) -> tuple[ptrain.TrainConfig, ptrain.TrainConfig]:
  ss_cfg = ptrain.TrainConfig(max_epochs=args.ss_max_epochs, patience=args.ss_patience,
                              batch_tokens=args.ss_batch_tokens, seed=args.seed)
  loc_cfg = ptrain.TrainConfig(max_epochs=args.loc_max_epochs, patience=args.loc_patience,
                               batch_size=64, seed=args.seed)
  return ss_cfg, loc_cfg


def _slim_metric(m: dict) -> dict:
  return {k: m[k] for k in m if k not in ("confusion",)}


def _slim_ss(r: dict) -> dict:
  """run_ss output without the bulky per-class tables (kept: accuracy, se, counts)."""
  out = {k: v for k, v in r.items() if k not in ("CB513", "TS115")}
  for name in ("CB513", "TS115"):
    out[name] = {q: _slim_metric(m) for q, m in r[name]["metrics"].items()}
    out[name]["n_proteins"] = r[name].get("n_proteins")
    out[name]["scoring"] = r[name].get("scoring")
  return out


def _slim_loc(r: dict) -> dict:
  out = {k: v for k, v in r.items() if k not in ("cv", "train_only")}
  out["cv"] = {q: _slim_metric(m) for q, m in r["cv"].items()}
  out["train_only"] = {q: _slim_metric(m) for q, m in r["train_only"].items()}
  return out


def run_probes(args, work: str, probe_data: dict) -> dict:
  ss_cfg, loc_cfg = probe_configs(args)
  probes_work = os.path.join(work, "probes")
  cache = os.path.join(work, "results")
  os.makedirs(cache, exist_ok=True)
  data_dir = probe_data["dir"]
  results: dict = {"ss": {}, "loc": {}, "pooling": {}, "seconds": {}}
  for kind in LM_KINDS + BASELINE_KINDS:
    _log(f"probes on {kind}")
    t = time.time()
    results["ss"][kind] = _cached(
        os.path.join(cache, f"ss_{kind}.json"),
        lambda k=kind: _slim_ss(pb.run_ss(k, data_dir, probes_work, ss_cfg, "cnn")))
    results["loc"][kind] = _cached(
        os.path.join(cache, f"loc_{kind}_mean.json"),
        lambda k=kind: _slim_loc(pb.run_loc(k, data_dir, probes_work, loc_cfg, "mean",
                                            args.folds)))
    results["seconds"][kind] = time.time() - t
  results["pooling"]["mean"] = results["loc"]["trained_lm"]
  for pooling in [p for p in args.poolings.split(",") if p != "mean"]:
    _log(f"pooling comparison: {pooling}")
    results["pooling"][pooling] = _cached(
        os.path.join(cache, f"loc_trained_lm_{pooling}.json"),
        lambda p=pooling: _slim_loc(pb.run_loc("trained_lm", data_dir, probes_work, loc_cfg,
                                               p, args.folds)))
  results["ss_config"] = dataclasses.asdict(ss_cfg)
  results["loc_config"] = dataclasses.asdict(loc_cfg)
  results["folds"] = args.folds
  return results


# --------------------------------------------------------------------------
# Stage 5: criterion, figures, report.
# --------------------------------------------------------------------------
def acid_criterion(probes: dict) -> dict:
  t = probes["ss"]["trained_lm"]["CB513"]["Q3"]
  r = probes["ss"]["random_lm"]["CB513"]["Q3"]
  diff = t["accuracy"] - r["accuracy"]
  se = math.sqrt(t["se"] ** 2 + r["se"] ** 2)
  return {"trained_q3": t["accuracy"], "trained_se": t["se"], "random_q3": r["accuracy"],
          "random_se": r["se"], "difference": diff, "combined_se": se,
          "ratio": diff / se if se > 0 else float("inf") if diff > 0 else 0.0,
          "passed": bool(diff > 2 * se)}


def paired_comparison(probes: dict) -> dict:
  """Trained LM against each other feature set on CB513 Q3, both probes scored
  on the same bootstrap resamples of proteins (metrics.paired_bootstrap_se).

  Context for the criterion, not the criterion: the issue's test uses the
  unpaired combined SE, which counts the proteins' shared difficulty twice.
  """
  from protjax.probes import metrics
  q3 = lambda kind: probes["ss"][kind]["CB513"]["Q3"]
  trained = q3("trained_lm")["per_protein"]
  out = {}
  for kind in ("random_lm",) + BASELINE_KINDS:
    other = q3(kind)["per_protein"]
    if trained["total"] != other["total"]:
      raise ValueError(f"CB513 scored residues differ between trained_lm and {kind}")
    diff = q3("trained_lm")["accuracy"] - q3(kind)["accuracy"]
    se = metrics.paired_bootstrap_se(trained["correct"], other["correct"], trained["total"])
    out[kind] = {"difference": diff, "paired_se": se, "ratio": diff / se if se else float("nan"),
                 "proteins_better": int(sum(a > b for a, b in zip(trained["correct"],
                                                                  other["correct"]))),
                 "proteins_worse": int(sum(a < b for a, b in zip(trained["correct"],
                                                                 other["correct"])))}
  return out


def _savefig(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def plot_pretraining(pre: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  # (JSON keys are strings: order the steps as numbers.)
  hist = sorted((int(s), m) for s, m in pre["history"].items())
  steps = np.array([s for s, _ in hist])
  ev = pre["eval_history"]
  ev_steps = sorted(int(s) for s in ev)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  win = max(1, min(25, len(steps) // 10 or 1))
  smooth = lambda x: np.convolve(x, np.ones(win) / win, mode="valid")
  for ax, key, name in ((axes[0], "loss", "training loss"),
                        (axes[1], "masked_residue_accuracy", "masked-residue accuracy (%)"),
                        (axes[2], "accuracy", "token accuracy over the loss's targets (%)")):
    scale = 1 if key == "loss" else 100
    y = np.array([scale * m.get(key, np.nan) for _, m in hist])
    earlier = sorted((int(s), m) for s, m in pre["earlier_history"].items() if key in m)
    if earlier:
      ax.plot([s for s, _ in earlier], [scale * m[key] for _, m in earlier],
              color="0.55", lw=0.6, label="train (logged means, earlier invocations)")
    ax.plot(steps, y, color="0.8", lw=0.6, label="train (per step)")
    if len(steps) >= win:
      ax.plot(steps[win - 1:], smooth(y), color="C0", label=f"train ({win}-step mean)")
    if ev_steps:
      ax.plot(ev_steps, [scale * ev[str(s)][key] for s in ev_steps], "o-", color="C3", ms=2,
              label="held-out 5% (eval batches)")
    final = scale * pre["heldout"][key]
    ax.axhline(final, color="C3", ls=":", lw=1, label=f"final, whole held-out split: {final:.3g}")
    if key == "masked_residue_accuracy":
      ax.axhline(100 * pre["heldout"]["best_constant_accuracy"], color="k", ls="--", lw=0.8,
                 label="best constant guess")
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.legend(fontsize=7)
  start = pre["run_start_step"]
  fig.suptitle(f"{pre['family']} pretraining ({pre['param_count']['total'] / 1e6:.2f}M "
               "parameters, " + (f"steps {start} → {pre['final_step']})" if start
                                 else f"{pre['final_step']} steps)"))
  fig.tight_layout()
  _savefig(fig, path)


def plot_tsne(work: str, probe_data: dict, path: str, seed: int, perplexity: float) -> dict:
  """t-SNE of mean-pooled DeepLoc validation embeddings, random LM | trained LM."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sklearn.manifold import TSNE
  val_fa = os.path.join(probe_data["dir"], LOC, "deeploc_val_membrane.fasta")
  fig, axes = plt.subplots(1, 2, figsize=(13, 6))
  colours = plt.get_cmap("tab10")
  info = {}
  for ax, kind in zip(axes, ("random_lm", "trained_lm")):
    ps = pdata.load_protein_set(os.path.join(work, "probes", f"{kind}_deeploc_val.h5"), val_fa,
                                pooling="mean")
    keep = ps.location >= 0
    x = ps.features[keep]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    perp = min(perplexity, max(2.0, (len(x) - 1) / 3.0))
    xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    for c, name in enumerate(pdata.LOCATIONS):
      sel = ps.location[keep] == c
      ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=colours(c), label=name)
    ax.set_title(f"{KIND_LABELS[kind]}: {int(keep.sum())} DeepLoc validation proteins")
    ax.set_xticks([])
    ax.set_yticks([])
    info[kind] = {"proteins": int(keep.sum()), "perplexity": perp}
  axes[1].legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.suptitle("t-SNE of per-protein (mean-pooled) embeddings, coloured by location")
  fig.tight_layout()
  _savefig(fig, path)
  return info


def _cell(m: Optional[dict]) -> str:
  return "-" if m is None else f"{m['accuracy']:.1f} ± {m['se']:.1f}"


def results_table(probes: dict) -> str:
  lines = ["| features | CB513 Q3 | CB513 Q8 | TS115 Q3 | TS115 Q8 | DeepLoc Q10 | DeepLoc Q2 |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for kind in LM_KINDS + BASELINE_KINDS:
    ss, loc = probes["ss"][kind], probes["loc"][kind]
    cells = [_cell(ss[n][q]) for n in ("CB513", "TS115") for q in ("Q3", "Q8")]
    cells += [_cell(loc["cv"].get(q)) for q in ("Q10", "Q2")]
    lines.append(f"| {KIND_LABELS[kind]} | " + " | ".join(cells) + " |")
  p = PAPER
  lines.append(f"| paper: ProtT5-XL-U50 | {p['CB513']['Q3']:.0f} | {p['CB513']['Q8']:.0f} | "
               f"{p['TS115']['Q3']:.0f} | {p['TS115']['Q8']:.0f} | {p['DeepLoc']['Q10']:.0f} | "
               f"{p['DeepLoc']['Q2']:.0f} |")
  return "\n".join(lines)


def pooling_table(probes: dict) -> str:
  lines = ["| pooling (trained LM) | features | DeepLoc Q10 | DeepLoc Q2 | Q10, train file only |",
           "| --- | --- | --- | --- | --- |"]
  for pooling in [p for p in POOLINGS if p in probes["pooling"]]:
    r = probes["pooling"][pooling]
    width = "3 × d" if pooling == "concat" else "d"
    lines.append(f"| {pooling} | {width} | {_cell(r['cv'].get('Q10'))} | "
                 f"{_cell(r['cv'].get('Q2'))} | {_cell(r['train_only'].get('Q10'))} |")
  return "\n".join(lines)


def standing(probes: dict) -> list[str]:
  """Plain sentences: the trained LM against each other row, CB513 Q3 and DeepLoc Q10."""
  out = []
  t_ss = probes["ss"]["trained_lm"]["CB513"]["Q3"]
  t_loc = probes["loc"]["trained_lm"]["cv"]["Q10"]
  for kind in ("random_lm",) + BASELINE_KINDS:
    parts = []
    for name, t, o in (("CB513 Q3", t_ss, probes["ss"][kind]["CB513"]["Q3"]),
                       ("DeepLoc Q10", t_loc, probes["loc"][kind]["cv"]["Q10"])):
      d = t["accuracy"] - o["accuracy"]
      se = math.sqrt(t["se"] ** 2 + o["se"] ** 2)
      verdict = ("better" if d > 2 * se else "worse" if d < -2 * se
                 else "within 2 combined SE")
      parts.append(f"{name} {d:+.1f} points = {d / se if se else float('nan'):+.2f} combined SE, "
                   f"{verdict}")
    out.append(f"- vs {KIND_LABELS[kind]}: " + "; ".join(parts) + ".")
  gap = [f"{name} {q} {PAPER[name][q] - v:.1f} points below"
         for name, q, v in (("CB513", "Q3", t_ss["accuracy"]),
                            ("TS115", "Q3", probes["ss"]["trained_lm"]["TS115"]["Q3"]["accuracy"]),
                            ("CB513", "Q8", probes["ss"]["trained_lm"]["CB513"]["Q8"]["accuracy"]),
                            ("DeepLoc", "Q10", t_loc["accuracy"]),
                            ("DeepLoc", "Q2", probes["loc"]["trained_lm"]["cv"]["Q2"]["accuracy"]))]
  out.append("- vs the paper's ProtT5-XL-U50 (2.8B parameters, ~2.2M steps at batch 2048 on "
             "BFD + UniRef50, probes trained on the full NetSurfP-2.0 and DeepLoc training "
             "sets): " + ", ".join(gap) + ".")
  return out


def _slim_report(rep: dict, window: int = 10) -> dict:
  """The report JSON with the per-step history as means over `window` steps
  (the full per-step history stays in the work dir's stage cache)."""
  out = dict(rep, pretraining=dict(rep["pretraining"]))
  hist = sorted((int(s), m) for s, m in rep["pretraining"]["history"].items())
  slim = {}
  for i in range(0, len(hist), window):
    chunk = hist[i:i + window]
    keys = set.intersection(*(set(m) for _, m in chunk))
    slim[str(chunk[-1][0])] = {k: float(np.mean([m[k] for _, m in chunk])) for k in sorted(keys)}
  out["pretraining"]["history"] = slim
  out["pretraining"]["history_note"] = (f"means over {window} consecutive steps, keyed by the "
                                        "last step of each window")
  return out


def _fmt_minutes(s: float) -> str:
  return f"{s / 60:.1f} min"


def _model_line(pre: dict) -> str:
  cfg = ", ".join(f"{k} {v}" for k, v in pre["model_config"].items())
  return (f"- Model: {pre['family']} ({cfg}): {pre['param_count']['total']:,} parameters "
          f"({pre['param_count']['encoder']:,} in the encoder with its embeddings).")


def _steps_line(pre: dict) -> str:
  dc = pre["data_config"]
  resumed = (f", in {pre['invocations']} invocations: this one resumed at {pre['start_step']} "
             f"after {_fmt_minutes(pre['earlier_invocations_seconds'])} of training before it "
             "(read from the event files)" if pre["invocations"] > 1 else "")
  stop = (f"stopped by the {pre['train_minutes_budget']}-minute wall-clock budget at step "
          f"{pre['stopped_by_budget_at']}" if pre["stopped_by_budget_at"] is not None
          else "ran to train.train_steps")
  rate = (pre["final_step"] - pre["start_step"]) * dc["batch_size"] / max(pre["train_seconds"], 1)
  return (f"- Steps: {pre['final_step']} (started at {pre['run_start_step']}{resumed}); {stop}; "
          f"training wall time {_fmt_minutes(pre['train_seconds'])}"
          + (" in this invocation" if resumed else "")
          + f" (≈ {rate:.1f} sequences/s incl. compilation and evaluation).")


def _eval_rows(pre: dict, most: int = 24) -> list[str]:
  """At most `most` evaluations (evenly spaced, the last always), as table rows."""
  ev = sorted(pre["eval_history"].items(), key=lambda kv: int(kv[0]))
  keep = ev[::max(1, math.ceil(len(ev) / most))]
  if ev and keep[-1] != ev[-1]:
    keep.append(ev[-1])
  return [f"| {s} | {e['loss']:.4f} | {100 * e['accuracy']:.2f}% | "
          f"{100 * e['masked_residue_accuracy']:.2f}% |" for s, e in keep]


def markdown(rep: dict) -> str:
  pre, probes, crit = rep["pretraining"], rep["probes"], rep["acid_criterion"]
  m, dc = rep["machine"], pre["data_config"]
  ho, hr = pre["heldout"], pre["heldout_random_init"]
  pd_ = rep["probe_data"]
  objective = dc["task_name"].rpartition("_")[2]
  L = [f"# Acid test: {pre['family']} pretrained on CPU vs a random encoder of the same shape\n",
       f"Produced by `{rep['command']}` (started {rep['started_utc']}, finished "
       f"{rep['finished_utc']}, wall time {_fmt_minutes(rep['wall_seconds'])}) at commit "
       f"{m.get('git_commit', '?')[:7]}.\n"]
  if rep["cached_stages"]:
    L.append(f"Stages {', '.join(rep['cached_stages'])} came from the caches of an earlier "
             f"invocation on the same work dir; their times below are from when they ran.\n")
  for note in rep["settings"].get("note") or []:
    L.append(f"Note (by the person who ran it): {note}\n")
  L.append("## Verdict\n")
  # Ratios to two decimals everywhere: 1.96 must not print as "2.0" beside NOT MET.
  L.append(f"Acid-test criterion (trained-LM CB513 Q3 − random-LM CB513 Q3 > 2 × combined SE): "
           f"{'**PASSED**' if crit['passed'] else '**NOT MET**'}. Trained "
           f"{crit['trained_q3']:.2f} ± {crit['trained_se']:.2f}, random "
           f"{crit['random_q3']:.2f} ± {crit['random_se']:.2f}: difference "
           f"{crit['difference']:+.2f} points = {crit['ratio']:.2f} × the combined SE "
           f"({crit['combined_se']:.2f}).\n")
  L.append("Paired, for context (not the criterion): both probes scored on the same "
           "bootstrap resamples of CB513 proteins, so the chains' shared difficulty cancels; "
           "the criterion's combined SE counts it twice. Trained LM "
           + "; ".join(f"vs {KIND_LABELS[k]} {p['difference']:+.2f} ± {p['paired_se']:.2f} "
                       f"points = {p['ratio']:+.1f} paired SE (better on "
                       f"{p['proteins_better']} chains, worse on {p['proteins_worse']})"
                       for k, p in ((k, rep["paired"][k])
                                    for k in ("random_lm",) + BASELINE_KINDS)) + ".\n")
  L.append("## Results (probes on frozen features; ± bootstrap SE over proteins)\n")
  L.append(results_table(probes) + "\n")
  L.append("Q3/Q8: CNN probe trained on the NetSurfP-2.0 training chains below; scored on "
           "residues with disorder==1 (CB513 also cb513_mask==1), pooled over residues. "
           f"Q10/Q2: per-protein FNN on mean-pooled features, {probes['folds']}-fold "
           "cross-validation over the DeepLoc validation file (each fold trains on the DeepLoc "
           "training subset plus the other folds; `Cytoplasm-Nucleus` not in Q10, U not in "
           "Q2), exactly as `bench/probe_baselines.py`.\n")
  L.append("Where the small model stands:\n")
  L.extend(standing(probes))
  L.append("")
  L.append("## Pretraining\n")
  L.append(_model_line(pre))
  L.append(f"- Objective: {OBJECTIVES.get(objective, objective)}"
           + (f"; mask rate {dc['mask_rate']}" if dc.get("mask_rate") is not None else "") + ".")
  L.append(f"- Corpus: {', '.join(os.path.basename(f) for f in pre['files'])}; task "
           f"`{dc['task_name']}` with these source files; {100 * dc['validation_fraction']:.0f}% "
           f"of the sequences held out by id hash; {dc['sequence_length']} tokens a row with "
           f"the family's framing tokens (random crop of longer proteins), batch "
           f"{dc['batch_size']}, no packing; {dc['backend']} input pipeline.")
  L.append(_steps_line(pre))
  L.append("- Optimiser and learning-rate schedule: the resolved gin below.\n")
  L.append(f"Held-out split ({ho['sequences']} sequences, {ho['masked_positions']} masked "
           "positions), deterministic:\n")
  L.append("| parameters | loss | cross-entropy | token accuracy | masked-residue accuracy |")
  L.append("| --- | --- | --- | --- | --- |")
  for name, h in (("trained (final step)", ho), ("random init (same shape)", hr)):
    L.append(f"| {name} | {h['loss']:.4f} | {h['cross_entropy']:.4f} | "
             f"{100 * h['accuracy']:.2f}% | {100 * h['masked_residue_accuracy']:.2f}% |")
  L.append(f"| best constant guess at masked positions | | | | "
           f"{100 * ho['best_constant_accuracy']:.2f}% |\n")
  if pre["eval_history"]:
    L.append("Evaluation during training (first `train.eval_steps` batches of the held-out "
             "split; token accuracy is over the loss's targets):\n")
    L.append("| step | loss | token accuracy | masked-residue accuracy |")
    L.append("| --- | --- | --- | --- |")
    L.extend(_eval_rows(pre))
    L.append("")
  L.append(f"![pretraining curves]({rep['name']}_pretraining.png)\n")
  L.append("## Per-protein embeddings (cf. the paper's Figure 4)\n")
  L.append(f"![t-SNE]({rep['name']}_tsne.png)\n")
  L.append(f"t-SNE (scikit-learn, PCA init, perplexity "
           f"{rep['tsne']['trained_lm']['perplexity']:.0f}, seed {rep['settings']['seed']}) of "
           "the standardised mean-pooled embeddings of the DeepLoc validation proteins with one "
           "of the ten locations.\n")
  L.append("## Pooling comparison on DeepLoc, trained LM (cf. the paper's Table 10)\n")
  L.append(pooling_table(probes) + "\n")
  L.append("Q10/Q2 by the same cross-validation as above; the last column is a probe trained on "
           "the DeepLoc training subset alone, scored on the whole validation file.\n")
  L.append("## Settings\n")
  L.append(f"- Command: `{rep['command']}`")
  L.append(f"- Script arguments: `{json.dumps(rep['settings'], sort_keys=True)}`")
  ss = pd_["netsurfp_train_chains"]
  ss_used = (f"all {ss['of']:,}" if ss["used"] == ss["of"]
             else f"{ss['used']:,} of {ss['of']:,} (random, seed {pd_['seed']})")
  L.append(f"- Probe data: NetSurfP-2.0 training chains {ss_used} ({ss['residues']:,} residues; "
           f"5% of them held out for early stopping); CB513 and TS115 whole; DeepLoc training "
           f"proteins {pd_['deeploc_train']['used']} of the "
           f"{pd_['deeploc_train']['not_in_validation_file']} "
           f"(of {pd_['deeploc_train']['of']}) whose sequence is not in the validation file; "
           f"DeepLoc validation file whole ({pd_['deeploc_val']['proteins']} proteins).")
  L.append(f"- Embeddings: `protjax.embed`, float32 compute, stored float16, full length (no "
           f"cropping), {rep['encoders']['layer_embedded']}, without the framing tokens; "
           f"random LM = the family's initialiser with seed {rep['encoders']['random_seed']}.")
  L.append(f"- Per-residue probe: CNN (32 channels, window 7, two heads), Adam "
           f"{probes['ss_config']['learning_rate']}, ≤ {probes['ss_config']['max_epochs']} "
           f"epochs, patience {probes['ss_config']['patience']}, "
           f"{probes['ss_config']['batch_tokens']} padded residues per batch.")
  L.append(f"- Per-protein probe: FNN (32 units, two heads), Adam "
           f"{probes['loc_config']['learning_rate']}, ≤ {probes['loc_config']['max_epochs']} "
           f"epochs, patience {probes['loc_config']['patience']}, batch "
           f"{probes['loc_config']['batch_size']}, inputs standardised; "
           f"{probes['folds']}-fold CV.")
  L.append("- Standard errors: bootstrap over proteins (1000 resamples), per "
           "`protjax.probes.metrics`; the criterion combines the two SEs in quadrature.\n")
  L.append("Pretraining gin (resolved):\n")
  L.append("```\n" + pre["config_str"].strip() + "\n```\n")
  L.append("## Machine and wall time\n")
  L.append(f"- {m.get('cpu_model')}, {m.get('cpus')} CPUs, {m.get('platform')}, python "
           f"{m.get('python')}, jax {m.get('jax')} ({m.get('jax_backend')}, "
           f"{m.get('jax_device_count')} devices); load average at start "
           f"{', '.join(f'{x:.1f}' for x in m.get('load_average_at_start', []))} "
           "(the CPUs may be shared with other jobs).")
  L.append(f"- git commit {m.get('git_commit')}" + (
      f" with local changes in {', '.join(m['git_dirty_files'])}" if m.get("git_dirty_files")
      else ""))
  order = STAGES + ("figures",)
  for stage, s in sorted(rep["stage_seconds"].items(), key=lambda kv: order.index(kv[0])):
    L.append(f"- {stage}: {_fmt_minutes(s)}"
             + (" (earlier invocation)" if stage in rep["cached_stages"] else ""))
  L.append(f"- sum of the stages: {_fmt_minutes(sum(rep['stage_seconds'].values()))}; wall time "
           f"of the invocation that wrote this report: {_fmt_minutes(rep['wall_seconds'])}")
  return "\n".join(L) + "\n"


# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  from protjax.models import registry
  ap.add_argument("--family", default="prott5", choices=sorted(registry.FAMILIES),
                  help="the model family (any registered one); picks the default "
                       "--model_gin, --gin_file and --name")
  ap.add_argument("--data", default="../shared/data", help="the shared data folder")
  ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"),
                  help="folder for <name>.md/.json/_*.png")
  ap.add_argument("--work_dir", default=None,
                  help="checkpoints, encoders, embeddings, probe caches (not committed); "
                       "a rerun resumes from what is there (default /tmp/protjax_<name>)")
  ap.add_argument("--gin_file", default=None,
                  help="the run gin (default gin_configs/runs/<the family's acid run>.gin)")
  ap.add_argument("--model_gin", default=None,
                  help="the model size gin, parsed before --gin_file (whose settings, e.g. "
                       "dropout 0, apply to any size); default the family's acid-test model")
  ap.add_argument("--gin", action="append", default=[],
                  help="extra gin binding, e.g. --gin 'DataConfig.batch_size=16' (repeatable)")
  # NumPy by default: the corpus fits in memory, and on 2 cores the
  # TensorFlow pipeline's threads take CPU from the train step.
  ap.add_argument("--data_backend", default="numpy", choices=("seqio", "numpy"),
                  help="pretraining input pipeline (same objectives and split; see "
                       "protjax.data.numpy_pipeline)")
  ap.add_argument("--train_minutes", type=float, default=65.0,
                  help="wall-clock budget of pretraining (incl. compilation); a safety net, "
                       "the run gins' steps take about 54 min on 2 quiet cores")
  ap.add_argument("--random_seed", type=int, default=1234,
                  help="init seed of the random-LM control")
  ap.add_argument("--seed", type=int, default=0, help="subsampling and probe seed")
  # All chains, as the paper: with a 500-chain subsample every feature set
  # ended at the CNN's ~65 ceiling on CB513 and hid what the LM adds.
  ap.add_argument("--ss_train_chains", type=int, default=0,
                  help="NetSurfP-2.0 training chains for the CNN probes (<=0: all 10,792)")
  ap.add_argument("--loc_train_proteins", type=int, default=300,
                  help="DeepLoc training proteins for the FNN probes (<=0: all)")
  # The whole set is ~170 updates per epoch; the CNN stops after 40-110 epochs.
  ap.add_argument("--ss_max_epochs", type=int, default=300)
  ap.add_argument("--ss_patience", type=int, default=10)
  ap.add_argument("--ss_batch_tokens", type=int, default=16384)
  ap.add_argument("--loc_max_epochs", type=int, default=200)
  ap.add_argument("--loc_patience", type=int, default=10)
  ap.add_argument("--folds", type=int, default=5)
  ap.add_argument("--poolings", default=",".join(POOLINGS),
                  help="poolings compared on DeepLoc with the trained LM (mean always runs)")
  ap.add_argument("--embed_token_budget", type=int, default=16384)
  ap.add_argument("--tsne_perplexity", type=float, default=30.0)
  ap.add_argument("--fresh", action="store_true", help="delete --work_dir first")
  ap.add_argument("--name", default=None,
                  help="output names: <out>/<name>.md, .json, <name>_pretraining.png, _tsne.png "
                       "(default acid_test for prott5, acid_test_<family> otherwise)")
  ap.add_argument("--note", action="append", default=[],
                  help="a sentence printed near the top of the report (repeatable), e.g. "
                       "what else shared the CPU")
  return ap


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The arguments with the family's defaults filled in."""
  args = build_parser().parse_args(argv)
  first = FIRST_NAMES.get(args.family)
  args.model_gin = args.model_gin or os.path.join(GIN_DIR, "models",
                                                  f"{args.family}_mini_wide.gin")
  args.gin_file = args.gin_file or os.path.join(
      GIN_DIR, "runs", f"{first or 'acid_test_' + args.family}.gin")
  args.name = args.name or first or f"acid_test_{args.family}"
  args.work_dir = args.work_dir or f"/tmp/protjax_{args.name}"
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  args.data = os.path.abspath(args.data)
  missing = missing_data(args.data)
  if missing:  # before anything is written: the work dir's caches stay as they were
    print(f"acid_test: --data {args.data} lacks {', '.join(missing)}", file=sys.stderr)
    return 2
  work = os.path.abspath(args.work_dir)
  if args.fresh and os.path.exists(work):
    shutil.rmtree(work)
  os.makedirs(work, exist_ok=True)
  os.makedirs(args.out, exist_ok=True)
  t_start = time.time()
  rep: dict = {"command": " ".join(["python", "bench/acid_test.py"] + list(
      sys.argv[1:] if argv is None else argv)),
               "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "settings": dict(vars(args)), "machine": machine(), "stage_seconds": {},
               "cached_stages": [], "name": args.name}

  def stage(name, fn, *a):
    t = time.time()
    path = os.path.join(work, f"stage_{name}.json")
    timing = os.path.join(work, f"stage_{name}.time.json")
    was_cached = os.path.exists(path)
    if name == "pretrain" and not was_cached:
      forget_trained_lm(work)
    out = _cached(path, fn, *a)
    if was_cached:
      # Report how long the stage took when it ran, not the cache read.
      rep["cached_stages"].append(name)
      with open(timing) as f:
        rep["stage_seconds"][name] = json.load(f)["seconds"]
    else:
      rep["stage_seconds"][name] = time.time() - t
      write_json_atomic(timing, {"seconds": rep["stage_seconds"][name], "finished_utc":
                                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    _log(f"stage {name} {'loaded' if was_cached else 'done'} in "
         f"{(time.time() - t) / 60:.1f} min")
    return out

  rep["pretraining"] = whole_run(stage("pretrain", pretrain, args, work))
  rep["encoders"] = stage("export", export_encoders, args, work, rep["pretraining"])
  rep["probe_data"] = stage("probe_data", make_probe_data, args, work)
  rep["embeddings"] = stage("embed", embed_probe_data, args, work, rep["probe_data"],
                            rep["encoders"])
  rep["probes"] = stage("probes", run_probes, args, work, rep["probe_data"])
  rep["acid_criterion"] = acid_criterion(rep["probes"])
  rep["paired"] = paired_comparison(rep["probes"])
  t = time.time()
  plot_pretraining(rep["pretraining"], os.path.join(args.out, f"{args.name}_pretraining.png"))
  rep["tsne"] = plot_tsne(work, rep["probe_data"], os.path.join(args.out, f"{args.name}_tsne.png"),
                          args.seed, args.tsne_perplexity)
  rep["stage_seconds"]["figures"] = time.time() - t
  rep["wall_seconds"] = time.time() - t_start
  rep["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  write_json_atomic(os.path.join(args.out, f"{args.name}.json"), _slim_report(rep))
  files.write_text_atomic(os.path.join(args.out, f"{args.name}.md"), markdown(rep))
  print(results_table(rep["probes"]))
  c = rep["acid_criterion"]
  _log(f"acid criterion {'PASSED' if c['passed'] else 'NOT MET'}: CB513 Q3 trained "
       f"{c['trained_q3']:.2f} vs random {c['random_q3']:.2f} "
       f"(diff {c['difference']:+.2f}, {c['ratio']:.2f} x combined SE)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
