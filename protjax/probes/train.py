"""Training, saving and evaluating probes on frozen embeddings.

Python API (the CLI and the end-to-end scripts call these):
  * `train_residue_probe(embeddings, labels, ...) -> Probe` (DSSP3 + DSSP8),
  * `train_protein_probe(embeddings, fasta, labels_csv=None, ...) -> Probe`
    (10 locations + membrane/soluble),
  * `evaluate(probe, embeddings, labels, ...) -> report dict` (Q3/Q8 or Q10/Q2
    with bootstrap SEs and per-class precision/recall),
  * `Probe.save(dir)` / `load_probe(dir)`: `config.json` + `params.msgpack`
    (flax msgpack serialisation, no pickle), written atomically.
The `fit_*` / `predict_*` functions do the same on in-memory data sets.

Training: optax Adam; per-residue batches padded to length buckets (one jit
per shape), losses masked to resolved residues and summed over the two heads;
per-protein losses masked where a label is missing, summed over the heads.
Early stopping on the validation loss with patience; the best epoch's
parameters are kept. Per-protein inputs are standardised with the training
set's per-feature mean and standard deviation (kept with the probe), because
pooled one-hot features (amino-acid composition) are tiny numbers; per-residue
inputs only with `TrainConfig.standardize_residues` (the paper's probes read
the raw last hidden state).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from protjax import files
from protjax.errors import InputError
from protjax.probes import data as pdata
from protjax.probes import metrics
from protjax.probes import models

RESIDUE_TASK = "ss3ss8"
PROTEIN_TASK = "location"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings shared by both probe kinds."""
  learning_rate: float = 1e-3
  batch_tokens: int = 8192  # per-residue: padded residues per batch
  batch_size: int = 64  # per-protein: proteins per batch
  max_epochs: int = 40
  patience: int = 4  # epochs without a better validation loss before stopping
  val_fraction: float = 0.05  # held out of the training set when no val set is given
  seed: int = 0
  # Per-residue: standardise each feature with the training residues' mean and
  # SD (kept with the probe). Off by default: the paper's probes read the raw
  # last hidden state. Per-protein inputs are always standardised (see above).
  standardize_residues: bool = False


@dataclasses.dataclass
class Probe:
  """A trained probe: `meta` (JSON-able) and `state` (params + input normaliser)."""
  meta: dict
  state: dict

  @property
  def task(self) -> str:
    return self.meta["task"]

  def module(self):
    table = models.RESIDUE_MODELS if self.task == RESIDUE_TASK else models.PROTEIN_MODELS
    return table[self.meta["model"]]()

  def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Writes `config.json` and `params.msgpack` into `out_dir` atomically,
    with the permissions `mkdir` would give. An existing `out_dir` is an
    InputError unless `overwrite` (and then only a probe folder, or an empty
    one, is replaced). A URL (gs://...) is uploaded with config.json last."""
    out_dir = files.absolute(out_dir)
    check_out_dir(out_dir, overwrite)
    with files.atomic_directory(out_dir, overwrite=overwrite, last=["config.json"]) as tmp:
      with open(os.path.join(tmp, "params.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.device_get(self.state)))
      with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(self.meta, f, indent=1, sort_keys=True)


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
  """InputError for a probe folder that cannot be written: its parent is
  missing, it exists (without `overwrite`), or it exists and is neither a
  probe folder nor empty. Training calls it first, not after its epochs."""
  out_dir = files.absolute(out_dir)
  parent = files.parent_of(out_dir)
  if not files.isdir(parent):
    raise InputError("output folder's parent does not exist", path=parent)
  if not (files.exists(out_dir) if files.is_url(out_dir) else os.path.lexists(out_dir)):
    return
  if not overwrite:
    raise InputError("probe folder exists (pass --overwrite to replace it)", path=out_dir)
  if not files.exists(files.join(out_dir, "config.json")):
    if not files.isdir(out_dir) or files.listdir(out_dir):
      raise InputError("exists and is not a probe folder; refusing to replace it",
                       path=out_dir)


def load_probe(probe_dir: str | os.PathLike) -> Probe:
  """Reads a probe folder written by `Probe.save`."""
  probe_dir = os.fspath(probe_dir)
  cfg = files.join(probe_dir, "config.json")
  prm = files.join(probe_dir, "params.msgpack")
  for p in (cfg, prm):
    if not files.exists(p):
      raise InputError("not a probe folder (missing config.json or params.msgpack)",
                       path=probe_dir)
  try:
    with files.open_file(cfg, "r") as f:
      meta = json.load(f)
    with files.open_file(prm, "rb") as f:
      state = flax.serialization.msgpack_restore(f.read())
  except (ValueError, OSError) as e:
    raise InputError(f"unreadable probe ({e.__class__.__name__})", path=probe_dir)
  if meta.get("format_version") != FORMAT_VERSION or meta.get("task") not in (
      RESIDUE_TASK, PROTEIN_TASK):
    raise InputError("not a protjax probe of a known version", path=cfg)
  return Probe(meta, state)


# --- losses ------------------------------------------------------------------
def _masked_ce(logits, labels, weights):
  """(sum of weighted CE, sum of weights): logits `[..., k]`, labels/weights `[...]`."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  return (ce * weights).sum(), weights.sum()


def residue_loss_terms(module, params, batch, dropout_rng=None):
  """Per head: (CE sum, weight sum) over resolved residues, and the logits."""
  logits = module.apply({"params": params}, batch["x"], batch["mask"],
                        deterministic=dropout_rng is None,
                        rngs=None if dropout_rng is None else {"dropout": dropout_rng})
  terms = {h: _masked_ce(logits[h], batch[h], batch["train_mask"])
           for h, _ in models.RESIDUE_HEADS}
  return terms, logits


def protein_loss_terms(module, params, batch, dropout_rng=None):
  """Per head: (CE sum, weight sum) over proteins with that label, and the logits."""
  logits = module.apply({"params": params}, batch["x"],
                        deterministic=dropout_rng is None,
                        rngs=None if dropout_rng is None else {"dropout": dropout_rng})
  terms = {h: _masked_ce(logits[h], batch[h], (batch[h] >= 0).astype(jnp.float32))
           for h, _ in models.PROTEIN_HEADS}
  return terms, logits


def _total(terms):
  """Sum over heads of each head's mean loss (a head with no labels adds 0)."""
  return sum(s / jnp.maximum(w, 1.0) for s, w in terms.values())


def _make_steps(module, loss_terms, optimizer):
  def train_step(params, opt_state, batch, rng):
    def loss_fn(p):
      terms, _ = loss_terms(module, p, batch, rng)
      return _total(terms)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def eval_step(params, batch):
    terms, logits = loss_terms(module, params, batch, None)
    preds = {h: jnp.argmax(l, -1) for h, l in logits.items()}
    return terms, preds

  return jax.jit(train_step), jax.jit(eval_step)


class _EarlyStopper:
  def __init__(self, patience: int):
    self.patience, self.best, self.best_epoch, self.best_state = patience, np.inf, -1, None

  def update(self, epoch: int, val_loss: float, state) -> bool:
    """Records the epoch; returns True when training should stop."""
    if not np.isfinite(val_loss):
      raise InputError(f"validation loss is {val_loss} at epoch {epoch}: training "
                       "diverged (non-finite embeddings or too high a learning rate?)")
    if val_loss < self.best - 1e-6:
      self.best, self.best_epoch = val_loss, epoch
      self.best_state = jax.device_get(state)
    return epoch - self.best_epoch >= self.patience


def _reduce_terms(all_terms: list) -> dict:
  out = {}
  for terms in all_terms:
    for h, (s, w) in terms.items():
      s0, w0 = out.get(h, (0.0, 0.0))
      out[h] = (s0 + float(s), w0 + float(w))
  return out


# --- per-residue ---------------------------------------------------------------
def _residue_eval(eval_step, params, data: pdata.ResidueSet, batch_tokens: int,
                  mean=None, std=None):
  """Runs the probe over `data`: (val loss, per-protein predictions per head)."""
  lengths = [f.shape[0] for f in data.features]
  preds = {h: [None] * len(data) for h, _ in models.RESIDUE_HEADS}
  all_terms = []
  for idx, blen, bsz in pdata.residue_batches(lengths, batch_tokens=batch_tokens):
    batch = pdata.pad_residue_batch(data, idx, blen, bsz, mean, std)
    terms, p = eval_step(params, {k: jnp.asarray(v) for k, v in batch.items()})
    all_terms.append(terms)
    p = jax.device_get(p)
    for row, i in enumerate(idx):
      for h in preds:
        preds[h][i] = np.asarray(p[h][row, :lengths[i]])
  red = _reduce_terms(all_terms)
  loss = sum(s / max(w, 1.0) for s, w in red.values())
  return loss, preds


def fit_residue(train: pdata.ResidueSet, val: pdata.ResidueSet, *, model: str = "cnn",
                config: TrainConfig = TrainConfig(), progress: bool = True) -> Probe:
  """Trains a per-residue probe on in-memory data with early stopping on `val`."""
  if model not in models.RESIDUE_MODELS:
    raise InputError(f"unknown per-residue model {model!r}, expected one of "
                     f"{sorted(models.RESIDUE_MODELS)}")
  if len(train) == 0 or len(val) == 0:
    raise InputError("empty training or validation set")
  module = models.RESIDUE_MODELS[model]()
  mean, std = pdata.residue_moments(train) if config.standardize_residues else (None, None)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, drop_rng = jax.random.split(rng)
  params = module.init(init_rng, jnp.zeros((1, 8, train.dim)), jnp.ones((1, 8)))["params"]
  optimizer = optax.adam(config.learning_rate)
  opt_state = optimizer.init(params)
  train_step, eval_step = _make_steps(module, residue_loss_terms, optimizer)
  np_rng = np.random.default_rng(config.seed)
  lengths = [f.shape[0] for f in train.features]
  stopper = _EarlyStopper(config.patience)
  history = []
  step = 0
  bar = tqdm(range(config.max_epochs), desc=f"probe {model}", disable=not progress,
             unit="epoch")
  for epoch in bar:
    t0 = time.time()
    losses = []
    for idx, blen, bsz in pdata.residue_batches(lengths, batch_tokens=config.batch_tokens,
                                                rng=np_rng):
      batch = pdata.pad_residue_batch(train, idx, blen, bsz, mean, std)
      params, opt_state, loss = train_step(params, opt_state,
                                           {k: jnp.asarray(v) for k, v in batch.items()},
                                           jax.random.fold_in(drop_rng, step))
      losses.append(loss)
      step += 1
    val_loss, preds = _residue_eval(eval_step, params, val, config.batch_tokens, mean, std)
    q3 = metrics.score_residues(val.dssp3, preds["dssp3"], val.score_mask, DSSP3_NAMES,
                                n_resamples=0)["accuracy"]
    rec = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
           "val_loss": float(val_loss), "val_q3": q3, "seconds": time.time() - t0}
    history.append(rec)
    bar.set_postfix(train=f"{rec['train_loss']:.3f}", val=f"{val_loss:.3f}", q3=f"{q3:.1f}")
    if stopper.update(epoch + 1, float(val_loss), params):
      break
  meta = {
      "format_version": FORMAT_VERSION, "task": RESIDUE_TASK, "model": model,
      "input_dim": train.dim, "embeddings_model": train.embed_model,
      "classes": {"dssp3": list(DSSP3_NAMES), "dssp8": list(DSSP8_NAMES)},
      "config": dataclasses.asdict(config), "best_epoch": stopper.best_epoch,
      "n_train": len(train), "n_val": len(val), "history": history,
  }
  state = {"params": stopper.best_state}
  if mean is not None:
    state.update(input_mean=mean, input_std=std)
  return Probe(meta, state)


def predict_residues(probe: Probe, data: pdata.ResidueSet, *, batch_tokens: int = 8192
                     ) -> dict[str, list[np.ndarray]]:
  """Per head, per protein `[length]` predicted class ids."""
  _, eval_step = _make_steps(probe.module(), residue_loss_terms, optax.adam(0.0))
  params = jax.tree_util.tree_map(jnp.asarray, probe.state["params"])
  mean, std = (np.asarray(probe.state[k], np.float32) if k in probe.state else None
               for k in ("input_mean", "input_std"))
  return _residue_eval(eval_step, params, data, batch_tokens, mean, std)[1]


DSSP3_NAMES = tuple(pdata.DSSP3)
DSSP8_NAMES = tuple(pdata.DSSP8)


# --- per-protein ----------------------------------------------------------------
def _protein_batch(data: pdata.ProteinSet, idx, mean, std, size: Optional[int] = None):
  n = len(idx)
  size = size or n
  x = np.zeros((size, data.features.shape[1]), np.float32)
  x[:n] = (data.features[idx] - mean) / std
  loc = np.full(size, -1, np.int32)
  mem = np.full(size, -1, np.int32)
  loc[:n], mem[:n] = data.location[idx], data.membrane[idx]
  return {"x": jnp.asarray(x), "location": jnp.asarray(loc), "membrane": jnp.asarray(mem)}


def _protein_eval(eval_step, params, data, mean, std, batch_size):
  preds = {h: np.zeros(len(data), np.int32) for h, _ in models.PROTEIN_HEADS}
  all_terms = []
  for idx in pdata.protein_batches(len(data), batch_size=batch_size):
    terms, p = eval_step(params, _protein_batch(data, idx, mean, std, batch_size))
    all_terms.append(terms)
    p = jax.device_get(p)
    for h in preds:
      preds[h][idx] = p[h][:len(idx)]
  red = _reduce_terms(all_terms)
  return sum(s / max(w, 1.0) for s, w in red.values()), preds


def fit_protein(train: pdata.ProteinSet, val: pdata.ProteinSet, *, model: str = "fnn",
                config: TrainConfig = TrainConfig(), progress: bool = True) -> Probe:
  """Trains the per-protein probe (location + membrane heads, masked losses)."""
  if model not in models.PROTEIN_MODELS:
    raise InputError(f"unknown per-protein model {model!r}, expected one of "
                     f"{sorted(models.PROTEIN_MODELS)}")
  if len(train) == 0 or len(val) == 0:
    raise InputError("empty training or validation set")
  module = models.PROTEIN_MODELS[model]()
  mean = train.features.mean(0)
  std = train.features.std(0) + 1e-6  # constant features (e.g. unused one-hot columns)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, drop_rng = jax.random.split(rng)
  params = module.init(init_rng, jnp.zeros((1, train.features.shape[1])))["params"]
  optimizer = optax.adam(config.learning_rate)
  opt_state = optimizer.init(params)
  train_step, eval_step = _make_steps(module, protein_loss_terms, optimizer)
  np_rng = np.random.default_rng(config.seed)
  stopper = _EarlyStopper(config.patience)
  history = []
  step = 0
  bar = tqdm(range(config.max_epochs), desc=f"probe {model}", disable=not progress,
             unit="epoch")
  for epoch in bar:
    losses = []
    for idx in pdata.protein_batches(len(train), batch_size=config.batch_size, rng=np_rng):
      batch = _protein_batch(train, idx, mean, std, config.batch_size)
      params, opt_state, loss = train_step(params, opt_state, batch,
                                           jax.random.fold_in(drop_rng, step))
      losses.append(loss)
      step += 1
    val_loss, preds = _protein_eval(eval_step, params, val, mean, std, config.batch_size)
    lab = val.location >= 0
    q10 = float(100 * (preds["location"][lab] == val.location[lab]).mean()) if lab.any() else None
    rec = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
           "val_loss": float(val_loss), "val_q10": q10}
    history.append(rec)
    bar.set_postfix(train=f"{rec['train_loss']:.3f}", val=f"{val_loss:.3f}")
    if stopper.update(epoch + 1, float(val_loss), params):
      break
  meta = {
      "format_version": FORMAT_VERSION, "task": PROTEIN_TASK, "model": model,
      "input_dim": train.dim, "embeddings_model": train.embed_model,
      "pooling": train.pooling,
      "classes": {"location": list(pdata.LOCATIONS), "membrane": list(pdata.MEMBRANE)},
      "config": dataclasses.asdict(config), "best_epoch": stopper.best_epoch,
      "n_train": len(train), "n_val": len(val),
      "n_train_location_labels": int((train.location >= 0).sum()),
      "n_train_membrane_labels": int((train.membrane >= 0).sum()), "history": history,
  }
  state = {"params": stopper.best_state, "input_mean": mean, "input_std": std}
  return Probe(meta, state)


def predict_proteins(probe: Probe, data: pdata.ProteinSet, *, batch_size: int = 256
                     ) -> dict[str, np.ndarray]:
  """Per head, `[proteins]` predicted class ids."""
  _, eval_step = _make_steps(probe.module(), protein_loss_terms, optax.adam(0.0))
  params = jax.tree_util.tree_map(jnp.asarray, probe.state["params"])
  mean = np.asarray(probe.state["input_mean"], np.float32)
  std = np.asarray(probe.state["input_std"], np.float32)
  return _protein_eval(eval_step, params, data, mean, std, batch_size)[1]


# --- file-level API ------------------------------------------------------------
def early_stopping_split(data, val_data, config: TrainConfig):
  """(training set, early-stopping set): `val_data` if given, else a seeded
  `config.val_fraction` of `data`'s proteins (the same split for the same seed)."""
  if val_data is not None:
    return data, val_data
  tr, va = pdata.split_indices(len(data), config.val_fraction, config.seed)
  return data.subset(tr), data.subset(va)


def train_residue_probe(embeddings: str, labels: str, *, out_dir: Optional[str] = None,
                        model: str = "cnn", config: TrainConfig = TrainConfig(),
                        val_embeddings: Optional[str] = None,
                        val_labels: Optional[str] = None,
                        progress: bool = True, overwrite: bool = False) -> Probe:
  """Trains a DSSP3+DSSP8 probe from an HDF5 file and a NetSurfP CSV.

  The validation set for early stopping is `val_embeddings`/`val_labels` if
  given, else `config.val_fraction` of the training proteins. Saves to
  `out_dir` if given (an existing one only with `overwrite`; checked first).
  """
  if out_dir is not None:
    check_out_dir(out_dir, overwrite)
  data = pdata.load_residue_set(embeddings, labels)
  val = None
  if val_labels is not None:
    val = pdata.load_residue_set(val_embeddings or embeddings, val_labels, dim=data.dim,
                                 model=data.embed_model)
  train, val = early_stopping_split(data, val, config)
  probe = fit_residue(train, val, model=model, config=config, progress=progress)
  probe.meta["train_files"] = {"embeddings": os.fspath(embeddings), "labels": os.fspath(labels)}
  if out_dir is not None:
    probe.save(out_dir, overwrite=overwrite)
  return probe


def _paths(value) -> list[str]:
  """One path or several, as a list of str."""
  if value is None:
    return []
  if isinstance(value, (str, os.PathLike)):
    return [os.fspath(value)]
  return [os.fspath(v) for v in value]


def load_protein_sources(embeddings, fastas, labels_csv=None, *, pooling: str = "mean",
                         dim: Optional[int] = None, model: Optional[str] = None
                         ) -> tuple[pdata.ProteinSet, dict]:
  """Loads DeepLoc label sources into one de-duplicated ProteinSet.

  Args:
    embeddings: one HDF5 file for every FASTA, or one per FASTA (same order).
    fastas: one DeepLoc FASTA or several (e.g. the 10-class file and the
      membrane-labelled one).
    labels_csv: `Label,Class` CSV(s) for FASTAs whose headers carry no
      location (`pdata.read_deeploc`).
    pooling, dim, model: as `pdata.load_protein_set` (the first file sets
      dim and model for the others).

  Returns:
    (set, counts): one protein per distinct sequence (`pdata.dedupe_by_sequence`),
    and its counts of merged duplicates and conflicting labels.
  """
  embeddings, fastas, csvs = _paths(embeddings), _paths(fastas), _paths(labels_csv)
  if len(embeddings) not in (1, len(fastas)):
    raise InputError(f"give one embeddings file for all {len(fastas)} label files, or one "
                     f"per label file in the same order (got {len(embeddings)})")
  sets = []
  for i, fasta in enumerate(fastas):
    sets.append(pdata.load_protein_set(embeddings[i if len(embeddings) > 1 else 0], fasta,
                                       csvs or None, pooling=pooling, dim=dim, model=model))
    dim, model = sets[0].dim, sets[0].embed_model
  return pdata.dedupe_by_sequence(pdata.concat_protein_sets(sets))


def train_protein_probe(embeddings, fasta, labels_csv=None, *,
                        out_dir: Optional[str] = None, model: str = "fnn",
                        pooling: str = "mean", config: TrainConfig = TrainConfig(),
                        exclude_sequences: Sequence[str] = (),
                        val_embeddings=None, val_fasta=None, val_labels_csv=None,
                        progress: bool = True, overwrite: bool = False) -> Probe:
  """Trains the location + membrane probe from HDF5 embeddings and DeepLoc labels.

  `embeddings`, `fasta` and `labels_csv` may each be one path or several
  (`load_protein_sources`): e.g. the 10-class training FASTA with its CSV
  and the membrane-labelled FASTA, so that one run trains both heads; a
  sequence given twice is one training protein with the labels of both.
  `exclude_sequences`: training proteins with one of these exact sequences
  are dropped (e.g. the test set's, to avoid train/test overlap).
  `val_fasta` (with `val_embeddings`, default the training embeddings, and
  `val_labels_csv`): the early-stopping set, whose sequences are dropped
  from training; else `config.val_fraction` of the training proteins.
  Saves to `out_dir` if given (an existing one only with `overwrite`;
  checked first).
  """
  if out_dir is not None:
    check_out_dir(out_dir, overwrite)
  data, counts = load_protein_sources(embeddings, fasta, labels_csv, pooling=pooling)
  val = None
  if val_fasta is not None:
    val, _ = load_protein_sources(val_embeddings or _paths(embeddings)[0], val_fasta,
                                  val_labels_csv, pooling=pooling, dim=data.dim,
                                  model=data.embed_model)
  n_loaded = len(data)
  excl = set(exclude_sequences) | (set(val.sequences) if val is not None else set())
  if excl:
    data = data.subset([i for i, s in enumerate(data.sequences) if s not in excl])
  train, val = early_stopping_split(data, val, config)
  probe = fit_protein(train, val, model=model, config=config, progress=progress)
  probe.meta["train_files"] = {"embeddings": _paths(embeddings), "labels": _paths(fasta),
                               "labels_csv": _paths(labels_csv)}
  if val_fasta is not None:
    probe.meta["val_files"] = {"embeddings": _paths(val_embeddings or _paths(embeddings)[0]),
                               "labels": _paths(val_fasta),
                               "labels_csv": _paths(val_labels_csv)}
  probe.meta["n_excluded_overlap"] = n_loaded - len(data)
  probe.meta.update(counts)
  if out_dir is not None:
    probe.save(out_dir, overwrite=overwrite)
  return probe


def evaluate_residue_set(probe: Probe, data: pdata.ResidueSet, *,
                         n_resamples: int = metrics.N_BOOTSTRAP) -> dict:
  preds = predict_residues(probe, data)
  return {
      "Q3": metrics.score_residues(data.dssp3, preds["dssp3"], data.score_mask, DSSP3_NAMES,
                                   n_resamples=n_resamples),
      "Q8": metrics.score_residues(data.dssp8, preds["dssp8"], data.score_mask, DSSP8_NAMES,
                                   n_resamples=n_resamples),
  }


def evaluate_protein_set(probe: Probe, data: pdata.ProteinSet, *,
                         n_resamples: int = metrics.N_BOOTSTRAP) -> dict:
  preds = predict_proteins(probe, data)
  out = {}
  # A head that saw no labels in training (e.g. membrane, when trained on the
  # DeepLoc 10-class file alone) is not scored.
  trained = lambda head: probe.meta.get(f"n_train_{head}_labels", 1) > 0
  if (data.location >= 0).any() and trained("location"):
    out["Q10"] = metrics.score_proteins(data.location, preds["location"], data.location >= 0,
                                        pdata.LOCATIONS, n_resamples=n_resamples)
  if (data.membrane >= 0).any() and trained("membrane"):
    out["Q2"] = metrics.score_proteins(data.membrane, preds["membrane"], data.membrane >= 0,
                                       pdata.MEMBRANE, n_resamples=n_resamples)
  if not out:
    raise InputError("nothing to score: no location or membrane labels for a head "
                     "that was trained")
  return out


def evaluate(probe: Probe | str, embeddings: str, labels: str, *,
             labels_csv: Optional[str] = None, cb513: bool = False,
             n_resamples: int = metrics.N_BOOTSTRAP) -> dict:
  """Scores a probe (or probe folder) on an embeddings file + labels.

  Returns a report dict: `metrics` ({"Q3", "Q8"} or {"Q10", "Q2"}, each with
  accuracy, se, counts, per_class, confusion) and provenance fields.
  """
  if not isinstance(probe, Probe):
    probe = load_probe(probe)
  dim, model = probe.meta["input_dim"], probe.meta["embeddings_model"]
  if probe.task == RESIDUE_TASK:
    data = pdata.load_residue_set(embeddings, labels, cb513=cb513, dim=dim, model=model)
    scores = evaluate_residue_set(probe, data, n_resamples=n_resamples)
    rule = "disorder==1" + (" and cb513_mask==1" if cb513 else "")
  else:
    data = pdata.load_protein_set(embeddings, labels, labels_csv,
                                  pooling=probe.meta["pooling"], dim=dim, model=model)
    scores = evaluate_protein_set(probe, data, n_resamples=n_resamples)
    rule = ("Q10 over the ten DeepLoc classes (Cytoplasm-Nucleus dropped); "
            "Q2 over M/S proteins (U excluded)")
  return {
      "task": probe.task, "probe_model": probe.meta["model"],
      "embeddings_model": probe.meta["embeddings_model"],
      "pooling": probe.meta.get("pooling"),
      "embeddings": os.fspath(embeddings), "labels": os.fspath(labels),
      "n_proteins": len(data), "scoring": rule,
      "bootstrap": {"resamples": n_resamples, "seed": metrics.BOOTSTRAP_SEED,
                    "unit": "protein"},
      "metrics": scores,
  }


def _fmt(x: Optional[float]) -> str:
  return "-" if x is None else f"{x:.1f}"


def report_markdown(report: dict) -> str:
  """A Markdown summary table plus per-class precision/recall tables."""
  lines = [f"# {report['task']} probe ({report['probe_model']}) on "
           f"{os.path.basename(report['labels'])}",
           "", f"Embeddings: `{report['embeddings_model']}`; scoring: {report['scoring']}; "
           f"SE: bootstrap over proteins, {report['bootstrap']['resamples']} resamples.", "",
           "| metric | accuracy (%) | SE | scored |", "| --- | --- | --- | --- |"]
  for name, m in report["metrics"].items():
    n = m.get("n_residues", m["n_proteins"])
    unit = "residues" if "n_residues" in m else "proteins"
    lines.append(f"| {name} | {m['accuracy']:.2f} | {m['se']:.2f} | {n} {unit} |")
  for name, m in report["metrics"].items():
    lines += ["", f"## {name} per class", "", "| class | precision | recall | support |",
              "| --- | --- | --- | --- |"]
    for cls, pc in m["per_class"].items():
      lines.append(f"| {cls} | {_fmt(pc['precision'])} | {_fmt(pc['recall'])} | "
                   f"{pc['support']} |")
  return "\n".join(lines) + "\n"
