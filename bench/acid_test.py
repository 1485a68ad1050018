"""The end-to-end acid test: does a small ProtT5 pretrained here beat chance?

  python bench/acid_test.py --data ../shared/data

One command, five stages (each cached in `--work_dir`, so a rerun resumes):

1. pretrain: ProtT5-mini-wide (`--model_gin`, then `gin_configs/runs/acid_test.gin`:
   11,000 steps, linear warm-up and decay to 0, about 54 min on 2 CPU cores)
   with the ProtT5 objective (15% of residues -> <extra_id_0>, the decoder
   rebuilds the whole sequence) on the FASTA files in `<data>/pretraining/`;
   5% of the sequences (by id hash, `DataConfig.validation_fraction`) are
   held out. Training stops at `train.train_steps` or, as a safety net on a
   slower or busier machine, at `--train_minutes` of wall clock (the
   trainer's `max_minutes`: it saves a checkpoint and returns).
   Then the masked-residue accuracy and loss of the final parameters are
   measured on the whole held-out split, beside a randomly initialised model
   and the best constant guess.
2. export: the trained encoder, and a randomly initialised encoder of the same
   shape (the paper's random-projection control), as protjax params
   checkpoints (`protjax.export.save_params_checkpoint`); the trained encoder
   also as a Hugging Face directory (`export_hf`).
3. embed (`protjax.embed.embed_fasta`, per-residue HDF5, float16 storage):
   the NetSurfP-2.0 training set (all 10,792 chains by default, as the paper's
   probes; `--ss_train_chains` subsamples it), CB513,
   TS115, a subsample of the DeepLoc training file (`--loc_train_proteins`,
   drawn after removing every sequence that also occurs in the validation
   file) and the whole DeepLoc validation file, with both encoders.
4. probe: for trained LM, random LM, one-hot and BLOSUM62 features, the
   per-residue CNN (Q3/Q8 on CB513 and TS115) and the per-protein FNN
   (Q10/Q2 on the DeepLoc validation file by k-fold cross-validation), with
   exactly the procedure of `bench/probe_baselines.py` (its `run_ss` /
   `run_loc` are called; see its docstring for the scoring rules). Plus the
   pooling comparison (mean / min / max / concat) on DeepLoc with the trained
   LM (the paper's Table 10).
5. report: `<out>/acid_test.md` and `.json`, `acid_test_pretraining.png`
   (loss and masked-residue accuracy curves) and `acid_test_tsne.png`
   (t-SNE of per-protein embeddings of the DeepLoc validation proteins,
   coloured by location, random LM beside trained LM, as the paper's Fig. 4).

A pretraining run longer than one sitting: run with the whole schedule
(`train.train_steps`, the learning-rate schedule's length) and a
`--train_minutes` that fits, `--stop_after pretrain`; keep `<work_dir>/pretrain`;
later, the same command with `--resume_pretraining` trains on from its last
checkpoint exactly as an unbroken run would (same data order, same schedule).

The acid-test criterion: trained-LM CB513 Q3 minus random-LM CB513 Q3 is
more than twice the combined standard error sqrt(se_trained^2 + se_random^2)
(bootstrap over proteins).
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
LM_KINDS = ("trained_lm", "random_lm")
BASELINE_KINDS = ("onehot", "blosum62")
KIND_LABELS = {"trained_lm": "trained LM", "random_lm": "random LM (same shape)",
               "onehot": "one-hot (DeepOneHot)", "blosum62": "BLOSUM62 (DeepBLOSUM62)"}
POOLINGS = ("mean", "min", "max", "concat")
# ProtT5-XL-U50 + the same probes (REFERENCE.md / data README).
PAPER = {"CB513": {"Q3": 86.0, "Q8": 74.0}, "TS115": {"Q3": 87.0, "Q8": 77.0},
         "DeepLoc": {"Q10": 81.0, "Q2": 91.0}}


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
    info["jax_devices"] = [str(d) for d in jax.devices()][:4]
    info["jax_device_count"] = jax.device_count()
  except Exception as e:  # pylint: disable=broad-except
    info["jax"] = f"unavailable: {e}"
  try:
    info["git_commit"] = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
        check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout
    info["git_dirty_files"] = [l[3:] for l in dirty.splitlines()]
  except OSError:
    pass
  return info


# --------------------------------------------------------------------------
# Stage 1: pretraining.
# --------------------------------------------------------------------------
def pretraining_files(data_dir: str) -> list[str]:
  d = os.path.join(data_dir, "pretraining")
  files = sorted(os.path.join(d, f) for f in os.listdir(d)
                 if f.endswith((".fasta", ".fa", ".fasta.gz", ".fa.gz")))
  if not files:
    raise SystemExit(f"no FASTA files in {d}")
  return files


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


def data_backend(choice: str) -> str:
  """"auto": the seqio pipeline where TensorFlow and seqio are installed, else
  the NumPy one (a bare GPU box); see protjax.data.numpy_pipeline."""
  if choice != "auto":
    return choice
  import importlib.util
  have_tf = all(importlib.util.find_spec(m) for m in ("tensorflow", "seqio"))
  return "seqio" if have_tf else "numpy"


class EncoderMLM:
  """Investigation objective (not ProtT5's): the T5 encoder alone predicts the
  masked residues through the tied embedding (logits scaled by d_model**-0.5,
  as T5's output layer), BERT-style, on exactly ProtT5's masks (15% of residues
  -> <extra_id_0>). A run seeded from a ProtT5 encoder has its own head
  instead (see __init__). The trainer's Model protocol; params are the encoder
  subtrees of the ProtT5 tree (plus `mlm_head`), so export and embedding are
  unchanged.
  """

  def __init__(self, config, seed_params=None):
    """seed_params: encoder params (t5.encoder_params of a ProtT5 run) to start
    from instead of a random init; the optimiser and step start fresh, and the
    logits come from a new linear `mlm_head` instead of the tied
    embedding: a ProtT5 encoder's outputs are not in its embedding's space
    (tied logits started at loss 856 with gradient norms of 500, which wrecked
    the trained encoder within 200 steps)."""
    from protjax.models import t5
    self.config = config
    self.module = t5.T5Encoder(config)
    self.seed_params = seed_params

  def init_variables(self, rng, batch_shapes) -> dict:
    import jax
    import jax.numpy as jnp
    tokens = jnp.ones((1, batch_shapes["encoder_input_tokens"][1]), jnp.int32)
    variables = self.module.init({"params": rng}, tokens, deterministic=True)
    params, axes = variables["params"], variables["params_axes"]
    if self.seed_params is not None:
      from flax.linen import partitioning
      params = jax.tree.map(lambda fresh, seed: jnp.asarray(seed, fresh.dtype),
                            params, self.seed_params)
      params = {**params, "mlm_head": self.random_head(jax.random.fold_in(rng, 1))}
      axes = {**axes, "mlm_head": {"kernel_axes": partitioning.AxisMetadata(
          names=("embed", "vocab"))}}
    return {"params": params, "params_axes": axes}

  def random_head(self, rng) -> dict:
    """A fresh `mlm_head`, kernel [d_model, vocab]. LeCun-normal: logits start
    near unit scale (the encoder's outputs have RMS about 1), and Adafactor,
    whose steps scale with a parameter's RMS, can move it (from zeros it barely
    moved in 160 steps)."""
    import jax
    import jax.numpy as jnp
    head = jax.random.normal(rng, (self.config.d_model, self.config.vocab_size), jnp.float32)
    return {"kernel": head * self.config.d_model ** -0.5}

  def loss_fn(self, params, batch, dropout_rng):
    import jax.numpy as jnp
    from protjax.models import t5
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    hidden = self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch.get("encoder_segment_ids"),
        batch.get("encoder_positions"), deterministic=dropout_rng is None, rngs=rngs)
    if "mlm_head" in params:
      logits = hidden.astype(jnp.float32) @ params["mlm_head"]["kernel"]
    else:
      emb = params["token_embedder"]["embedding"]
      logits = jnp.einsum("bld,vd->blv", hidden.astype(jnp.float32) * self.config.d_model ** -0.5,
                          emb.astype(jnp.float32))
    return t5._loss_and_metrics(logits, {  # pylint: disable=protected-access
        "decoder_target_tokens": batch["encoder_target_tokens"],
        "decoder_loss_weights": batch["encoder_loss_weights"],
        "encoder_input_tokens": batch["encoder_input_tokens"]})

  def flops_per_example(self, batch_shapes) -> float:
    c, n = self.config, batch_shapes["encoder_input_tokens"][1]
    per_layer = 2 * (4 * c.d_model * c.num_heads * c.d_kv + 2 * c.d_model * c.d_ff) * n
    attn = 4 * n * n * c.num_heads * c.d_kv
    return 3.0 * (c.num_encoder_layers * (per_layer + attn) + 2 * c.d_model * c.vocab_size * n)

  def tokens_per_example(self, batch_shapes) -> int:
    return batch_shapes["encoder_input_tokens"][1]


def _weights_and_targets(batch):
  if "decoder_target_tokens" in batch:
    return batch["decoder_loss_weights"], batch["decoder_target_tokens"]
  return batch["encoder_loss_weights"], batch["encoder_target_tokens"]


def heldout_eval(params, config, data_cfg, max_batches: int = 1000, model=None) -> dict:
  """Deterministic loss and masked-residue accuracy over the whole held-out split.

  Also the accuracy of the best constant guess (the residue most frequent at
  the masked positions of this split: an upper bound for a frequency-only
  model).
  """
  import jax
  from protjax.models import t5
  model = model or t5.EncoderDecoderModel(config)
  step = jax.jit(lambda p, b: model.loss_fn(p, b, None)[1])
  mask_id = 127
  tot = {"loss": 0.0, "cross_entropy": 0.0, "accuracy": 0.0}
  n_tok = 0.0
  masked_correct, n_masked = 0.0, 0
  counts = np.zeros(config.vocab_size, np.int64)
  n_seq = 0
  for i, batch in enumerate(data_cfg.get_dataset("validation", repeat=False)):
    if i >= max_batches:
      break
    m = jax.device_get(step(params, batch))
    w = float(m["num_tokens"])
    for k in tot:
      tot[k] += w * float(m[k])
    n_tok += w
    weights, targets = _weights_and_targets(batch)
    masked = (batch["encoder_input_tokens"] == mask_id) & (weights > 0)
    nm = int(masked.sum())
    if nm:  # (a batch without masked positions may report 0/0)
      masked_correct += float(m["masked_residue_accuracy"]) * nm
    n_masked += nm
    counts += np.bincount(targets[masked], minlength=config.vocab_size)
    n_seq += int((batch["encoder_input_tokens"] > 0).any(1).sum())
  out = {k: v / max(n_tok, 1.0) for k, v in tot.items()}
  out["masked_residue_accuracy"] = masked_correct / max(n_masked, 1)
  out["masked_positions"] = n_masked
  out["target_tokens"] = n_tok
  out["sequences"] = n_seq
  out["best_constant_accuracy"] = float(counts.max() / max(n_masked, 1))
  return out


def _seed_encoder(model_dir: Optional[str], config):
  """The encoder params of a ProtT5 run's latest checkpoint (None: no seed)."""
  if not model_dir:
    return None
  from protjax.export import load_training_run
  from protjax.models import t5
  params, seed_config = load_training_run(model_dir)
  if seed_config != config:
    raise SystemExit(f"--seed_encoder_from {model_dir}: its model config differs from "
                     f"this run's ({seed_config} vs {config}); pass the same --model_gin")
  return t5.encoder_params(params)


def pretrain(args, work: str) -> dict:
  """Trains (or resumes) the acid-test ProtT5; returns curves, steps and held-out scores."""
  import gin
  import jax
  from protjax import trainer
  from protjax.export import load_training_run
  from protjax.models import t5

  model_dir = os.path.join(work, "pretrain")
  files = pretraining_files(args.data)
  bindings = [f"train.model_dir = {model_dir!r}",
              f"DataConfig.source_files = {tuple(files)!r}",
              f"DataConfig.backend = {data_backend(args.data_backend)!r}"]
  if args.objective == "encoder_mlm":
    bindings.append("DataConfig.feature_converter = 'encoder'")
  bindings += list(args.gin)
  gin_files = [args.model_gin, args.gin_file]  # the run file overrides the model file
  _parse_gin(gin_files, bindings)
  t0 = time.time()

  _log(f"pretraining into {model_dir} (budget {args.train_minutes} min)")
  extra = {}
  if args.objective == "encoder_mlm":
    config = gin.get_configurable(t5.T5Config)()
    extra["model"] = EncoderMLM(config, _seed_encoder(args.seed_encoder_from, config))
  result = gin.get_configurable(trainer.train)(config_str=gin.config_str(),
                                               max_minutes=args.train_minutes, **extra)
  train_seconds = time.time() - t0
  config_str = gin.config_str()
  data_cfg = _data_config()
  gin.clear_config()
  params, config = load_training_run(model_dir)
  _log(f"pretraining stopped at step {result.step} after {train_seconds / 60:.1f} min; "
       "held-out evaluation")
  model = EncoderMLM(config) if args.objective == "encoder_mlm" else None
  heldout = heldout_eval(params, config, data_cfg, model=model)
  rand = t5.EncoderDecoderModel(config).init_variables(
      jax.random.PRNGKey(args.random_seed), 1, 8, 8)["params"]
  if model is not None:
    rand = t5.encoder_params(rand)
    if "mlm_head" in params:  # the control gets a random head too, not the tied embedding
      rand["mlm_head"] = model.random_head(
          jax.random.fold_in(jax.random.PRNGKey(args.random_seed), 1))
  heldout_random = heldout_eval(rand, config, data_cfg, model=model)
  _log(f"held-out masked-residue accuracy {100 * heldout['masked_residue_accuracy']:.2f}% "
       f"(random init {100 * heldout_random['masked_residue_accuracy']:.2f}%, best constant "
       f"{100 * heldout['best_constant_accuracy']:.2f}%), loss {heldout['loss']:.4f}")
  history = {str(s): {k: m[k] for k in ("loss", "masked_residue_accuracy", "accuracy",
                                         "learning_rate", "grad_norm") if k in m}
             for s, m in sorted(result.history.items())}
  total, encoder = t5.param_count(config)
  return {
      "objective": args.objective, "seed_encoder_from": args.seed_encoder_from,
      "model_dir": model_dir, "files": files, "gin_files": gin_files, "bindings": bindings,
      "config_str": config_str, "model_config": dataclasses.asdict(config),
      "data_config": dataclasses.asdict(data_cfg),
      "param_count": {"total": int(total), "encoder": int(encoder)},
      "start_step": result.start_step, "final_step": result.step,
      "stopped": result.stopped, "stopped_by_budget_at": result.step if result.stopped == "time_limit" else None,
      "train_minutes_budget": args.train_minutes, "train_seconds": train_seconds,
      "history": history,
      "eval_history": {str(s): m for s, m in sorted(result.eval_history.items())},
      "heldout": heldout, "heldout_random_init": heldout_random,
      "heldout_random_init_params": sorted(rand),
  }


def whole_run(pre: dict) -> dict:
  """`pre` with the figures of the whole run, not only of the invocation that wrote it.

  A run stopped by its budget or a killed session and started again resumes
  from its last checkpoint; `pre` (the trainer's result) covers that last
  invocation. The model dir's event files cover every invocation: from them
  come the step the run started at, the earlier invocations' training time,
  the evaluations of all, and the logged training means before this one.
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
  import jax
  from protjax import export
  from protjax.models import t5
  params, config = export.load_training_run(pre["model_dir"])
  out = {}
  out["trained_lm"] = export.save_params_checkpoint(
      os.path.join(work, "encoders", "trained_lm"), params, config, kind="encoder",
      overwrite=True)
  rand = t5.EncoderDecoderModel(config).init_variables(
      jax.random.PRNGKey(args.random_seed), 1, 8, 8)["params"]
  out["random_lm"] = export.save_params_checkpoint(
      os.path.join(work, "encoders", "random_lm"), rand, config, kind="encoder",
      overwrite=True)
  try:
    out["trained_lm_hf"] = export.export_hf(
        params, config, os.path.join(work, "encoders", "trained_lm_hf"), "float32",
        kind="encoder", overwrite=True)
  except Exception as e:  # pylint: disable=broad-except
    # The HF copy is a by-product; the run embeds from the params checkpoint.
    out["trained_lm_hf_error"] = f"{e.__class__.__name__}: {e}"
  out["random_seed"] = args.random_seed
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


def drop_stage_cache(work: str, stage_name: str) -> None:
  """Deletes a stage's cached result and timing, so the next run runs it again."""
  for suffix in (".json", ".time.json"):
    path = os.path.join(work, f"stage_{stage_name}{suffix}")
    if os.path.exists(path):
      os.remove(path)


def forget_trained_lm(work: str) -> None:
  """Deletes what an earlier pretraining left downstream (the trained LM's
  export, embeddings, probes and the later stages' caches), before pretraining
  runs again (resumed after a kill, or restarted): those caches would
  otherwise be reused for a model they no longer describe. The random LM's
  and the baselines' files do not depend on pretraining and stay."""
  import glob
  for stage_name in ("export", "embed", "probes"):
    drop_stage_cache(work, stage_name)
  for pattern in ("encoders/trained_lm*", "probes/trained_lm_*", "probes/probe_trained_lm_*",
                  "results/*_trained_lm*"):
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
  out["options"] = {"storage_dtype": "float16", "token_budget": args.embed_token_budget,
                    "per_residue": "last encoder hidden state without </s>"}
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


def _slim_ss(r: dict) -> dict:
  """run_ss output without the bulky per-class tables (kept: accuracy, se, counts)."""
  out = {k: v for k, v in r.items() if k not in ("CB513", "TS115")}
  for name in ("CB513", "TS115"):
    out[name] = {q: _slim_metric(m) for q, m in r[name]["metrics"].items()}
    out[name]["n_proteins"] = r[name].get("n_proteins")
    out[name]["scoring"] = r[name].get("scoring")
  return out


def _slim_metric(m: dict) -> dict:
  return {k: m[k] for k in m if k not in ("confusion",)}


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
  results: dict = {"ss": {}, "loc": {}, "pooling": {}}
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
    results.setdefault("seconds", {})[kind] = time.time() - t
  results["pooling"]["mean"] = results["loc"]["trained_lm"]
  for pooling in [p for p in args.poolings.split(",") if p != "mean"]:
    _log(f"pooling comparison: {pooling}")
    results["pooling"][pooling] = _cached(
        os.path.join(cache, f"loc_trained_lm_{pooling}.json"),
        lambda p=pooling: _slim_loc(pb.run_loc("trained_lm", data_dir, probes_work, loc_cfg,
                                               p, args.folds)))
  results["ss_config"] = dataclasses.asdict(ss_cfg)
  results["loc_config"] = dataclasses.asdict(loc_cfg)
  return results


# --------------------------------------------------------------------------
# Stage 5: figures, criterion, report.
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


def _cb513_q3_per_protein(work: str, kind: str, probes: dict, probe_data: dict):
  """Per-protein CB513 Q3 counts of `kind`'s probe: from its results, else by
  re-scoring its saved probe (runs from before the counts were kept); None
  when neither is there or the re-scored accuracy is not the reported one."""
  q3 = probes["ss"][kind]["CB513"]["Q3"]
  if "per_protein" in q3:
    return q3["per_protein"]
  probe_dir = os.path.join(work, "probes", f"probe_{kind}_cnn")
  h5 = os.path.join(work, "probes", f"{kind}_CB513.h5")
  if not (os.path.isdir(probe_dir) and os.path.exists(h5)):
    return None
  rescored = ptrain.evaluate(probe_dir, h5, os.path.join(probe_data["dir"], SS, "CB513.csv"),
                             cb513=True, n_resamples=2)["metrics"]["Q3"]
  if abs(rescored["accuracy"] - q3["accuracy"]) > 1e-9:
    _log(f"{probe_dir} re-scores CB513 Q3 {rescored['accuracy']:.4f}, not the reported "
         f"{q3['accuracy']:.4f}: no paired comparison for {kind}")
    return None
  return rescored["per_protein"]


def paired_comparison(work: str, probes: dict, probe_data: dict) -> dict:
  """Trained LM against each other feature set on CB513 Q3, both probes scored
  on the same bootstrap resamples of proteins (metrics.paired_bootstrap_se).

  Context for the criterion, not the criterion: the issue's test uses the
  unpaired combined SE, which counts the proteins' shared difficulty twice.
  """
  from protjax.probes import metrics
  trained = _cb513_q3_per_protein(work, "trained_lm", probes, probe_data)
  out = {}
  for kind in ("random_lm",) + BASELINE_KINDS:
    other = _cb513_q3_per_protein(work, kind, probes, probe_data)
    if trained is None or other is None:
      out[kind] = None
      continue
    if trained["total"] != other["total"]:
      raise ValueError(f"CB513 scored residues differ between trained_lm and {kind}")
    diff = (probes["ss"]["trained_lm"]["CB513"]["Q3"]["accuracy"]
            - probes["ss"][kind]["CB513"]["Q3"]["accuracy"])
    se = metrics.paired_bootstrap_se(trained["correct"], other["correct"], trained["total"])
    better = int(sum(a > b for a, b in zip(trained["correct"], other["correct"])))
    worse = int(sum(a < b for a, b in zip(trained["correct"], other["correct"])))
    out[kind] = {"difference": diff, "paired_se": se, "ratio": diff / se if se else float("nan"),
                 "proteins_better": better, "proteins_worse": worse}
  return out


def plot_pretraining(pre: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  # (JSON keys are strings: order the steps as numbers.)
  hist = sorted((int(s), m) for s, m in pre["history"].items())
  steps = np.array([s for s, _ in hist])
  loss = np.array([m["loss"] for _, m in hist])
  macc = np.array([m.get("masked_residue_accuracy", np.nan) for _, m in hist])
  tacc = np.array([m.get("accuracy", np.nan) for _, m in hist])
  ev = pre["eval_history"]
  ev_steps = sorted(int(s) for s in ev)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  win = max(1, min(25, len(steps) // 10 or 1))
  smooth = lambda x: np.convolve(x, np.ones(win) / win, mode="valid")
  for ax, y, key, name in ((axes[0], loss, "loss", "loss (cross-entropy + z-loss)"),
                           (axes[1], 100 * macc, "masked_residue_accuracy",
                            "masked-residue accuracy (%)"),
                           (axes[2], 100 * tacc, "accuracy", "token accuracy, all targets (%)")):
    earlier = sorted((int(s), m) for s, m in pre["earlier_history"].items()
                     if key in m)
    if earlier:
      ax.plot([s for s, _ in earlier], [(1 if key == "loss" else 100) * m[key] for _, m in earlier],
              color="0.55", lw=0.6, label="train (logged means, earlier invocations)")
    ax.plot(steps, y, color="0.8", lw=0.6, label="train (per step)")
    if len(steps) >= win:
      ax.plot(steps[win - 1:], smooth(y), color="C0", label=f"train ({win}-step mean)")
    if ev_steps:
      scale = 100 if key != "loss" else 1
      ax.plot(ev_steps, [scale * ev[str(s)][key] for s in ev_steps], "o-", color="C3",
              label="held-out 5% (eval batches)")
    final = pre["heldout"][key] * (100 if key != "loss" else 1)
    ax.axhline(final, color="C3", ls=":", lw=1,
               label=f"final, whole held-out split: {final:.3g}")
    if key == "masked_residue_accuracy":
      ax.axhline(100 * pre["heldout"]["best_constant_accuracy"], color="k", ls="--", lw=0.8,
                 label="best constant guess")
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.legend(fontsize=7)
  start = pre["run_start_step"]
  fig.suptitle(f"ProtT5 pretraining ({pre['param_count']['total'] / 1e6:.2f}M parameters, "
               + (f"steps {start} → {pre['final_step']})" if start else f"{pre['final_step']} steps)"))
  fig.tight_layout()
  _savefig(fig, path)


def _savefig(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


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


def standing(probes: dict, probe_data: dict) -> list[str]:
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
  full = os.path.join(REPO, "bench", "results", "probe_baselines.json")
  ss = probe_data["netsurfp_train_chains"]
  if ss["used"] < ss["of"] and os.path.exists(full):
    # The same baselines with the probes trained on the whole training files:
    # how much the probe-data subsampling here costs.
    with open(full) as f:
      base = json.load(f).get("baselines", {})
    cells = []
    for kind in BASELINE_KINDS:
      try:
        cells.append(f"{KIND_LABELS[kind]} CB513 Q3 {_cell(base[kind]['ss']['CB513']['metrics']['Q3'])}"
                     f", DeepLoc Q10 {_cell(base[kind]['loc']['cv']['Q10'])}")
      except (KeyError, TypeError):
        pass
    if cells:
      out.append("- For scale: with the probes trained on the whole NetSurfP-2.0 and DeepLoc "
                 "training files (`bench/results/probe_baselines.md`, same procedure): "
                 + "; ".join(cells) + ".")
  return out


def _investigation(path: str) -> dict:
  """The headline numbers of another run's acid_test.json."""
  with open(path) as f:
    r = json.load(f)
  pre = r["pretraining"]
  init_from = [b for b in pre["bindings"] if b.startswith("train.init_from")]
  # (Older reports, all of one invocation, lack the whole-run fields.)
  return {
      "path": path, "command": r["command"], "objective": pre.get("objective", "prott5"),
      "model": "d_model {d_model}, {num_encoder_layers}+{num_decoder_layers} layers".format(
          **pre["model_config"]),
      "init_from": init_from[0] if init_from else None,
      "start_step": pre.get("run_start_step", pre["start_step"]), "final_step": pre["final_step"],
      "train_seconds": pre["train_seconds"] + pre.get("earlier_invocations_seconds", 0.0),
      "heldout": pre["heldout"], "acid_criterion": r["acid_criterion"],
      "table": {k: {"CB513_Q3": r["probes"]["ss"][k]["CB513"]["Q3"],
                    "TS115_Q3": r["probes"]["ss"][k]["TS115"]["Q3"],
                    "DeepLoc_Q10": r["probes"]["loc"][k]["cv"]["Q10"]}
                for k in LM_KINDS},
      "wall_seconds": r["wall_seconds"],
      "ss_train_chains": r["probe_data"]["netsurfp_train_chains"]["used"],
  }


def investigation_markdown(invs: list) -> list[str]:
  L = ["## Investigation: other runs of this script\n",
       "| run | model | objective | steps | held-out masked-residue acc. | probe chains | "
       "trained CB513 Q3 | random CB513 Q3 | diff / combined SE | criterion | "
       "trained DeepLoc Q10 |",
       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for inv in invs:
    c, t = inv["acid_criterion"], inv["table"]["trained_lm"]
    start = f"{inv['start_step']} → " if inv["start_step"] else ""
    L.append(f"| `{inv['command']}` | {inv['model']} | {inv['objective']} | "
             f"{start}{inv['final_step']} | "
             f"{100 * inv['heldout']['masked_residue_accuracy']:.2f}% | "
             f"{inv['ss_train_chains']:,} | {_cell(t['CB513_Q3'])} | "
             f"{_cell(inv['table']['random_lm']['CB513_Q3'])} | {c['ratio']:.2f} | "
             f"{'passed' if c['passed'] else 'not met'} | {_cell(t['DeepLoc_Q10'])} |")
  return L + [""]


def diagnostics_markdown(diag: dict) -> list[str]:
  """`bench/acid_diagnostics.py`'s table (it writes <work_dir>/diagnostics.json)."""
  L = ["## Diagnostics: what the CNN gets from each feature set\n",
       "`python bench/acid_diagnostics.py --work_dir <work_dir>`: the same NetSurfP-2.0 "
       "training chains and CB513 residues, every feature standardised with the training "
       "residues' statistics; logistic regressions (scikit-learn) and the CNN probe of the "
       "table above.\n",
       "| features | residue identity from one position | linear Q3, one residue | linear Q3, "
       "window of 7 | CNN Q3, standardised inputs |",
       "| --- | --- | --- | --- | --- |"]
  for kind, d in diag.items():
    c = d["cnn_standardised_q3"]
    L.append(f"| {KIND_LABELS.get(kind, kind)} | {d['identity_accuracy']:.1f}% | "
             f"{d['linear_q3_one_residue']:.1f} | {d['linear_q3_window7']:.1f} | "
             f"{c['accuracy']:.1f} ± {c['se']:.1f} |")
  return L + [""]


def copy_transition(pre: dict) -> Optional[str]:
  """When the decoder started copying the unmasked residues (ProtT5 objective only).

  Full reconstruction has two parts: copy the 85% unmasked residues through
  cross-attention (which needs the decoder to find the aligned encoder
  position by content: T5 has no position signal across the two stacks), and
  predict the masked 15%. Until the copy circuit forms, held-out token
  accuracy stays near that of a left-to-right LM (~15%), and the encoder gets
  little useful gradient.
  """
  if pre.get("objective", "prott5") != "prott5" or not pre["eval_history"]:
    return None
  ev = sorted((int(s), e) for s, e in pre["eval_history"].items())
  after = [(s, e) for s, e in ev if e["accuracy"] > 0.5]
  if not after:
    return ("The decoder never learned to copy the unmasked residues from the encoder "
            f"(held-out token accuracy ≤ {100 * max(e['accuracy'] for _, e in ev):.0f}% at every "
            "evaluation, i.e. a left-to-right LM that ignores the encoder).")
  s1, e1 = after[0]
  if s1 == ev[0][0] and pre["run_start_step"]:
    return (f"The decoder was already copying the unmasked residues when this run began "
            f"(held-out token accuracy {100 * e1['accuracy']:.0f}% at its first evaluation, "
            f"step {s1}): the copy transition came in the run it continues.")
  before = [(s, e) for s, e in ev if s < s1 and e["accuracy"] < 0.25]
  prev = f" from {100 * before[-1][1]['accuracy']:.0f}% at step {before[-1][0]}" if before else ""
  return (f"Copy transition: held-out token accuracy rose{prev} to "
          f"{100 * e1['accuracy']:.0f}% at step {s1}: only then did the decoder start copying "
          "the unmasked residues from the encoder (before, it was a left-to-right LM that all "
          "but ignored the encoder, so the encoder learned little). The masked-residue "
          "accuracy can only climb after that (it first dips: a masked position has nothing "
          "to copy).")


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


def markdown(rep: dict) -> str:
  pre, probes, crit = rep["pretraining"], rep["probes"], rep["acid_criterion"]
  m, cfg, dc = rep["machine"], pre["model_config"], pre["data_config"]
  ho, hr = pre["heldout"], pre["heldout_random_init"]
  pd_ = rep["probe_data"]
  verdict = ("**PASSED**" if crit["passed"] else "**NOT MET**")
  L = []
  L.append("# Acid test: a small ProtT5 pretrained on CPU vs a random encoder of the same shape\n")
  L.append(f"Produced by `{rep['command']}` "
           f"(started {rep['started_utc']}, finished {rep['finished_utc']}, "
           f"wall time {_fmt_minutes(rep['wall_seconds'])}).\n")
  if rep.get("cached_stages"):
    L.append(f"Stages {', '.join(rep['cached_stages'])} came from the caches of an earlier "
             f"invocation on the same work dir; their times below are from when they ran "
             f"(sum of all stage times: {_fmt_minutes(sum(rep['stage_seconds'].values()))}).\n")
  for note in rep["settings"].get("note") or []:
    L.append(f"Note (by the person who ran it): {note}\n")
  if rep.get("rerendered_utc"):
    source = rep.get("rerendered_from", "cached stage results")
    L.append(f"Re-rendered {rep['rerendered_utc']} by the same script from that run's {source} "
             f"(no stage re-run; {rep.get('rerender_reason', '')}).\n")
  L.append("## Verdict\n")
  # Ratios to two decimals everywhere: 1.96 must not print as "2.0" beside NOT MET.
  L.append(f"Acid-test criterion (trained-LM CB513 Q3 − random-LM CB513 Q3 > 2 × combined SE): "
           f"{verdict}. Trained {crit['trained_q3']:.2f} ± {crit['trained_se']:.2f}, random "
           f"{crit['random_q3']:.2f} ± {crit['random_se']:.2f}: difference "
           f"{crit['difference']:+.2f} points = {crit['ratio']:.2f} × the combined SE "
           f"({crit['combined_se']:.2f}).\n")
  paired = [(kind, rep["paired"][kind]) for kind in KIND_LABELS if rep["paired"].get(kind)]
  if paired:
    L.append("Paired, for context (not the criterion): both probes scored on the same "
             "bootstrap resamples of CB513 proteins, so the chains' shared difficulty cancels; "
             "the criterion's combined SE counts it twice. Trained LM "
             + "; ".join(f"vs {KIND_LABELS[k]} {p['difference']:+.2f} ± {p['paired_se']:.2f} "
                         f"points = {p['ratio']:+.1f} paired SE (better on "
                         f"{p['proteins_better']} chains, worse on {p['proteins_worse']})"
                         for k, p in paired) + ".\n")
  L.append("## Results (probes on frozen features; ± bootstrap SE over proteins)\n")
  L.append(results_table(probes) + "\n")
  L.append("Q3/Q8: CNN probe trained on the NetSurfP-2.0 training chains below; scored on "
           "residues with disorder==1 (CB513 also cb513_mask==1), pooled over residues. "
           "Q10/Q2: per-protein "
           f"FNN on mean-pooled features, {probes['folds']}-fold cross-validation over the "
           "DeepLoc validation file (each fold trains on the DeepLoc training subset plus the "
           "other folds; `Cytoplasm-Nucleus` not in Q10, U not in Q2), exactly as "
           "`bench/probe_baselines.py`.\n")
  L.append("Where the small model stands:\n")
  L.extend(standing(probes, pd_))
  L.append("")
  if rep.get("investigations"):
    L.extend(investigation_markdown(rep["investigations"]))
  if rep.get("diagnostics"):
    L.extend(diagnostics_markdown(rep["diagnostics"]))
  L.append("## Pretraining\n")
  L.append(f"- Model: ProtT5 (T5 v1.0: ReLU FFN, tied embeddings, RMS norm, relative "
           f"position bias), d_model {cfg['d_model']}, d_ff {cfg['d_ff']}, {cfg['num_heads']} "
           f"heads × d_kv {cfg['d_kv']}, {cfg['num_encoder_layers']} encoder + "
           f"{cfg['num_decoder_layers']} decoder layers, dropout {cfg['dropout_rate']}, "
           f"compute {cfg['dtype']}: {pre['param_count']['total']:,} parameters "
           f"({pre['param_count']['encoder']:,} in the encoder with the embedding).")
  if pre.get("objective", "prott5") == "prott5":
    L.append("- Objective: ProtT5's (each residue → `<extra_id_0>` with probability 0.15, the "
             "decoder rebuilds the whole sequence; cross-entropy + 1e-4 z-loss).")
  else:
    head = ("a new randomly initialised linear head" if pre.get("seed_encoder_from")
            else "the tied embedding")
    L.append("- Objective: NOT ProtT5's (investigation run): ProtT5's masks (each residue → "
             f"`<extra_id_0>` with probability 0.15), but the encoder alone predicts the masked "
             f"residues through {head} (BERT-style; no decoder; cross-entropy + 1e-4 z-loss "
             "over masked positions)."
             + (f" The encoder started from the latest checkpoint of the ProtT5 run in "
                f"`{pre['seed_encoder_from']}` (its decoder dropped; fresh optimiser, step 0); "
                "the random-init row below scores a random encoder through "
                + ("a random head." if "mlm_head" in pre.get("heldout_random_init_params", ())
                   else "its tied embedding (reports before the control got a head).")
                if pre.get("seed_encoder_from") else ""))
  L.append(f"- Corpus: {', '.join(os.path.basename(f) for f in pre['files'])}; task "
           f"`{dc['task_name']}` with these source files; {100 * dc['validation_fraction']:.0f}% "
           f"of the sequences held out by id hash; length {dc['sequence_length']} tokens incl. "
           f"`</s>` (random crop of longer proteins), batch {dc['batch_size']}, no packing; "
           f"{dc.get('backend', 'seqio')} input pipeline.")
  resumed = (f", in {pre['invocations']} invocations: this one resumed at {pre['start_step']} "
             f"after {_fmt_minutes(pre['earlier_invocations_seconds'])} of training before it "
             "(read from the event files)" if pre["invocations"] > 1 else "")
  L.append(f"- Steps: {pre['final_step']} (started at "
           f"{pre['run_start_step']}{resumed}); "
           + (f"stopped by the {pre['train_minutes_budget']}-minute wall-clock budget at step "
              f"{pre['stopped_by_budget_at']}" if pre['stopped_by_budget_at'] is not None
              else "ran to train.train_steps")
           + f"; training wall time {_fmt_minutes(pre['train_seconds'])}"
           + (" in this invocation" if resumed else "") + " "
           f"(≈ {(pre['final_step'] - pre['start_step']) * dc['batch_size'] / max(pre['train_seconds'], 1):.1f} "
           f"sequences/s incl. compilation and evaluation).")
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
  copy = copy_transition(pre)
  if copy:
    L.append(copy + "\n")
  if pre["eval_history"]:
    L.append("Evaluation during training (first `train.eval_steps` batches of the held-out "
             "split):\n")
    L.append("| step | loss | token accuracy | masked-residue accuracy |")
    L.append("| --- | --- | --- | --- |")
    for s, e in sorted(pre["eval_history"].items(), key=lambda kv: int(kv[0])):
      L.append(f"| {s} | {e['loss']:.4f} | {100 * e['accuracy']:.2f}% | "
               f"{100 * e['masked_residue_accuracy']:.2f}% |")
    L.append("")
  L.append(f"![pretraining curves]({rep['name']}_pretraining.png)\n")
  L.append("## Per-protein embeddings (cf. the paper's Figure 4)\n")
  L.append(f"![t-SNE]({rep['name']}_tsne.png)\n")
  L.append(f"t-SNE (scikit-learn, PCA init, perplexity {rep['tsne']['trained_lm']['perplexity']:.0f}, "
           f"seed {rep['settings']['seed']}) of the standardised mean-pooled embeddings of the "
           "DeepLoc validation proteins with one of the ten locations.\n")
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
  L.append(f"- Embeddings: `protjax.embed.embed_fasta`, float32 compute, stored float16, full "
           f"length (no cropping; T5's relative positions), last encoder hidden state without "
           f"`</s>`; random LM = the model's initialiser with seed {rep['encoders']['random_seed']}.")
  L.append(f"- Per-residue probe: CNN (32 channels, window 7, two heads), Adam "
           f"{probes['ss_config']['learning_rate']}, ≤ {probes['ss_config']['max_epochs']} epochs, "
           f"patience {probes['ss_config']['patience']}, {probes['ss_config']['batch_tokens']} "
           f"padded residues per batch.")
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
           "(the CPUs were shared with other jobs).")
  L.append(f"- git commit {m.get('git_commit')}" + (
      f" with local changes in {', '.join(m['git_dirty_files'])}" if m.get("git_dirty_files")
      else ""))
  order = ("pretrain", "export", "probe_data", "embed", "probes", "figures")
  for stage, s in sorted(rep["stage_seconds"].items(),
                         key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
    L.append(f"- {stage}: {_fmt_minutes(s)}"
             + (" (earlier invocation)" if stage in rep.get("cached_stages", []) else ""))
  L.append(f"- sum of the stages: {_fmt_minutes(sum(rep['stage_seconds'].values()))}; wall time "
           f"of the invocation that wrote this report: {_fmt_minutes(rep['wall_seconds'])}")
  return "\n".join(L) + "\n"


# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------
STAGES = ("pretrain", "export", "probe_data", "embed", "probes")


class _StopAfter(Exception):
  """Raised after the stage named by --stop_after."""


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default="../shared/data", help="the shared data folder")
  ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"),
                  help="folder for acid_test.md/.json/_*.png")
  ap.add_argument("--work_dir", default="/tmp/protjax_acid",
                  help="checkpoints, encoders, embeddings, probe caches (not committed); "
                       "a rerun resumes from what is there")
  ap.add_argument("--gin_file", default=os.path.join(REPO, "gin_configs", "runs", "acid_test.gin"))
  ap.add_argument("--model_gin",
                  default=os.path.join(REPO, "gin_configs", "models", "prott5_mini_wide.gin"),
                  help="the model size gin, parsed before --gin_file (whose settings, "
                       "e.g. dropout 0, apply to any size)")
  ap.add_argument("--gin", action="append", default=[],
                  help="extra gin binding, e.g. --gin 'DataConfig.batch_size=16' (repeatable)")
  ap.add_argument("--objective", default="prott5", choices=("prott5", "encoder_mlm"),
                  help="prott5: ProtT5's (the acid test); encoder_mlm: an investigation "
                       "objective, the encoder alone predicts the masked residues")
  ap.add_argument("--seed_encoder_from", default=None, metavar="MODEL_DIR",
                  help="encoder_mlm only: start from the encoder of this ProtT5 run's latest "
                       "checkpoint (fresh optimiser, step 0) instead of a random init")
  # NumPy by default: the sample corpus fits in memory, and on 2 cores the
  # TensorFlow pipeline's threads take CPU from the train step.
  ap.add_argument("--data_backend", default="numpy", choices=("auto", "seqio", "numpy"),
                  help="pretraining input pipeline (same objective and split; see "
                       "protjax.data.numpy_pipeline); auto: seqio if TensorFlow is installed")
  ap.add_argument("--train_minutes", type=float, default=65.0,
                  help="wall-clock budget of pretraining (incl. compilation); a safety net, "
                       "the default 11,000 steps take about 54 min on 2 quiet cores")
  ap.add_argument("--random_seed", type=int, default=1234,
                  help="init seed of the random-LM control")
  ap.add_argument("--seed", type=int, default=0, help="subsampling and probe seed")
  # All chains, as the paper: with a 500-chain subsample (sessions 1-4) every
  # feature set ended at the CNN's ~65 ceiling on CB513 and hid what the LM adds.
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
  ap.add_argument("--resume_pretraining", action="store_true",
                  help="train on from the run's latest checkpoint for another "
                       "--train_minutes even though an earlier invocation finished the "
                       "pretrain stage (its budget ran out); with the same settings the run "
                       "follows its schedule as if it had never stopped: for a "
                       "train.train_steps longer than one sitting")
  ap.add_argument("--stop_after", choices=STAGES[:-1],
                  help="stop after this stage (its cache written, no report), e.g. to keep "
                       "a multi-sitting run's pretrain/ folder between sittings")
  ap.add_argument("--name", default="acid_test",
                  help="output names: <out>/<name>.md, .json, <name>_pretraining.png, _tsne.png")
  ap.add_argument("--investigation", action="append", default=[],
                  help="acid_test.json of another run (e.g. longer pretraining) to summarise "
                       "in an Investigation section (repeatable)")
  ap.add_argument("--note", action="append", default=[],
                  help="a sentence printed near the top of the report (repeatable)")
  ap.add_argument("--rerender_reason", default="",
                  help="stated in the report when every stage comes from the caches")
  ap.add_argument("--rerender_from", metavar="REPORT_JSON",
                  help="re-render that report's .md and .json from the JSON alone (no work "
                       "dir; figures kept), adding any --note and --investigation given; "
                       "needs --rerender_reason")
  return ap


def rerender_from(path: str, notes: Sequence[str], investigations: Sequence[str],
                  reason: str) -> dict:
  """Rewrites `path` (a report JSON) and the .md beside it from the JSON: its
  notes and investigations plus the given ones, the investigations' figures
  read again. Everything else, figures included, is the run's as written."""
  if not reason:
    raise SystemExit("--rerender_from needs --rerender_reason (stated in the report)")
  with open(path) as f:
    rep = json.load(f)
  settings = rep["settings"]
  settings["note"] = list(settings.get("note") or []) + list(notes)
  settings["investigation"] = list(dict.fromkeys(list(settings.get("investigation") or [])
                                                 + list(investigations)))
  rep["investigations"] = [_investigation(p) for p in settings["investigation"]]
  rep.update(rerendered_utc=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
             rerender_reason=reason, rerendered_from="report JSON")
  write_json_atomic(path, rep)
  files.write_text_atomic(os.path.splitext(path)[0] + ".md", markdown(rep))
  return rep


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.rerender_from:
    rerender_from(args.rerender_from, args.note, args.investigation, args.rerender_reason)
    return 0
  if args.seed_encoder_from and args.objective != "encoder_mlm":
    raise SystemExit("--seed_encoder_from needs --objective encoder_mlm (a ProtT5 run "
                     "continues with --gin train.init_from=MODEL_DIR)")
  args.data = os.path.abspath(args.data)
  work = os.path.abspath(args.work_dir)
  if args.fresh and os.path.exists(work):
    shutil.rmtree(work)
  if args.resume_pretraining:
    drop_stage_cache(work, "pretrain")
  os.makedirs(work, exist_ok=True)
  os.makedirs(args.out, exist_ok=True)
  t_start = time.time()
  rep: dict = {"command": " ".join(["python", "bench/acid_test.py"] + list(
      sys.argv[1:] if argv is None else argv)),
               "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "settings": {k: v for k, v in vars(args).items()},
               "machine": machine(), "stage_seconds": {}}
  previous = None
  prev_path = os.path.join(args.out, f"{args.name}.json")
  if os.path.exists(prev_path):
    with open(prev_path) as f:
      previous = json.load(f)
    if previous.get("settings", {}).get("work_dir") != args.work_dir:
      previous = None
  cached = []

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
      cached.append(name)
      if os.path.exists(timing):
        with open(timing) as f:
          rep["stage_seconds"][name] = json.load(f)["seconds"]
      elif previous and name in previous.get("stage_seconds", {}):
        rep["stage_seconds"][name] = previous["stage_seconds"][name]
    else:
      rep["stage_seconds"][name] = time.time() - t
      write_json_atomic(timing, {"seconds": time.time() - t, "finished_utc": time.strftime(
          "%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    _log(f"stage {name} {'loaded' if was_cached else 'done'} in "
         f"{(time.time() - t) / 60:.1f} min")
    if name == args.stop_after:
      _log(f"stopping after stage {name} (--stop_after)")
      raise _StopAfter
    return out

  try:
    rep["pretraining"] = whole_run(stage("pretrain", pretrain, args, work))
    rep["encoders"] = stage("export", export_encoders, args, work, rep["pretraining"])
    rep["probe_data"] = stage("probe_data", make_probe_data, args, work)
    rep["embeddings"] = stage("embed", embed_probe_data, args, work, rep["probe_data"],
                              rep["encoders"])
  except _StopAfter:
    return 0
  probes = stage("probes", run_probes, args, work, rep["probe_data"])
  probes["folds"] = args.folds
  rep["probes"] = probes
  rep["acid_criterion"] = acid_criterion(probes)
  rep["paired"] = paired_comparison(work, probes, rep["probe_data"])
  t = time.time()
  rep["name"] = args.name
  plot_pretraining(rep["pretraining"], os.path.join(args.out, f"{args.name}_pretraining.png"))
  rep["tsne"] = plot_tsne(work, rep["probe_data"], os.path.join(args.out, f"{args.name}_tsne.png"),
                          args.seed, args.tsne_perplexity)
  rep["stage_seconds"]["figures"] = time.time() - t
  rep["wall_seconds"] = time.time() - t_start
  rep["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  rep["investigations"] = [_investigation(p) for p in args.investigation]
  diag_path = os.path.join(work, "diagnostics.json")
  if os.path.exists(diag_path):
    with open(diag_path) as f:
      rep["diagnostics"] = json.load(f)
  rep["cached_stages"] = list(cached)
  if len(cached) == len(STAGES) and previous is not None:
    # Nothing ran: a re-render of the earlier run's report (its clock, machine
    # and command stand; the figures and text are redrawn).
    for key in ("command", "started_utc", "finished_utc", "wall_seconds", "machine"):
      rep[key] = previous[key]
    rep["stage_seconds"]["figures"] = previous["stage_seconds"].get("figures", 0.0)
    rep["cached_stages"] = previous.get("cached_stages", [])
    rep["rerendered_utc"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rep["rerender_reason"] = args.rerender_reason
  write_json_atomic(os.path.join(args.out, f"{args.name}.json"), _slim_report(rep))
  md = markdown(rep)
  files.write_text_atomic(os.path.join(args.out, f"{args.name}.md"), md)
  print(results_table(probes))
  c = rep["acid_criterion"]
  _log(f"acid criterion {'PASSED' if c['passed'] else 'NOT MET'}: CB513 Q3 trained "
       f"{c['trained_q3']:.2f} vs random {c['random_q3']:.2f} "
       f"(diff {c['difference']:+.2f}, {c['ratio']:.2f} x combined SE)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
