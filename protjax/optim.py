"""Optimisers and learning-rate schedules (optax), one small function each.

* `adafactor` + `inverse_sqrt_schedule`: ProtT5 (Mesh-TF defaults: factored
  second moments, decay exponent 0.8, update clipping 1.0, updates scaled by
  the parameter RMS, no momentum, no weight decay; base rate 0.01 with 10k
  warm-up steps).
* `lamb` + `linear_warmup_decay`: ProtBert / ProtAlbert / ProtElectra /
  ProtTXL (weight decay 0.01 on matrices only).
* `adamw` + `linear_warmup_decay`: ProtXLNet.

Each returns an `Optimizer`: the optax transformation and the schedule (the
trainer logs the learning rate from it). Global-norm gradient clipping is
chained in front when `clip_norm` > 0. Gradient accumulation over
micro-batches is done by the trainer (a `lax.scan` inside the step, so one
step is one optimiser update); the z-loss is part of each family's loss.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation and the learning-rate schedule inside it."""
  tx: optax.GradientTransformation
  schedule: Schedule


def inverse_sqrt_schedule(base_rate: float = 0.01, warmup_steps: int = 10_000,
                          linear_warmup: bool = False) -> Schedule:
  """Inverse-square-root decay (Mesh-TF / t5x `rsqrt_decay`).

  lr(step) = base_rate * sqrt(warmup_steps / max(step, warmup_steps)): the
  rate is `base_rate` for the first `warmup_steps` steps, then falls as
  1/sqrt(step). With base_rate 0.01 and 10k warm-up this is exactly Mesh-TF's
  1/sqrt(max(step, 10000)), the ProtT5 schedule. `linear_warmup=True` ramps
  linearly from 0 over the warm-up instead of holding the rate constant.
  """
  if warmup_steps <= 0:
    raise ValueError(f"warmup_steps must be positive, got {warmup_steps}")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    if linear_warmup:
      decay = decay * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
    return base_rate * decay

  return schedule


def linear_warmup_decay(peak_rate: float, warmup_steps: int, total_steps: int,
                        end_rate: float = 0.0) -> Schedule:
  """Linear warm-up from 0 to `peak_rate`, then linear decay to `end_rate`.

  The BERT-style schedule ProtBert/Albert/Electra/XLNet were trained with.
  """
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"need 0 <= warmup_steps < total_steps, got "
                     f"{warmup_steps}, {total_steps}")
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_rate, warmup_steps),
       optax.linear_schedule(peak_rate, end_rate, total_steps - warmup_steps)],
      [warmup_steps])


def constant_schedule(rate: float) -> Schedule:
  return lambda step: jnp.full((), rate, jnp.float32)


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: matrices and embeddings.

  Scales of layer norms (and biases, in families that have them) are 1-D and
  excluded, as in BERT's `exclude_from_weight_decay=["LayerNorm", "bias"]`.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def with_clipping(tx: optax.GradientTransformation,
                   clip_norm: float) -> optax.GradientTransformation:
  if clip_norm and clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx


def adafactor(learning_rate: Optional[Schedule] = None, *,
              factored: bool = True, decay_rate: float = 0.8,
              clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128,
              momentum: Optional[float] = None,
              weight_decay: Optional[float] = None,
              clip_norm: float = 0.0) -> Optimizer:
  """Adafactor with factored second moments (ProtT5's optimiser).

  Args:
    learning_rate: schedule; default `inverse_sqrt_schedule()` (0.01, 10k).
    factored: factor the second moment of matrices into row and column means.
    decay_rate: second-moment decay exponent (beta2_t = 1 - t**-decay_rate).
    clipping_threshold: RMS update clipping (Mesh-TF 1.0; None disables).
    multiply_by_parameter_scale: scale updates by the parameter RMS.
    min_dim_size_to_factor: only factor when two dims are at least this large.
    momentum: first-moment decay; None keeps no first moment (ProtT5).
    weight_decay: decoupled weight decay rate on `decay_mask` params; None off.
    clip_norm: global gradient-norm clipping before Adafactor; 0 disables.
  """
  schedule = learning_rate or inverse_sqrt_schedule()
  tx = optax.adafactor(
      learning_rate=schedule, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=
      multiply_by_parameter_scale, clipping_threshold=clipping_threshold,
      momentum=momentum, weight_decay_rate=weight_decay,
      weight_decay_mask=decay_mask if weight_decay else None,
      factored=factored)
  return Optimizer(with_clipping(tx, clip_norm), schedule)


def lamb(learning_rate: Schedule, *, weight_decay: float = 0.01,
         b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         clip_norm: float = 1.0) -> Optimizer:
  """LAMB (ProtBert, ProtAlbert, ProtElectra, ProtTXL) as BERT's and ALBERT's
  TPU code runs it: weight decay and the layer-wise trust ratio on matrices
  only (`decay_mask`); biases and layer-norm parameters take Adam's step
  times the learning rate (their `exclude_from_layer_adaptation` defaults
  to `exclude_from_weight_decay`).

  Why it matters: under the trust ratio a parameter moves by about the
  learning rate times its own norm, so a bias that starts at 0 grows by a
  factor of (1 + lr) a step. With it, ProtElectra's discriminator needed
  about 300 more steps to reach the base rate of replaced positions
  (bench/RESULTS.md, ProtElectra).
  """
  tx = optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(learning_rate))
  return Optimizer(with_clipping(tx, clip_norm), learning_rate)


def adamw(learning_rate: Schedule, *, weight_decay: float = 0.01,
          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
          clip_norm: float = 1.0) -> Optimizer:
  """Adam with decoupled weight decay on matrices (ProtXLNet)."""
  tx = optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                   weight_decay=weight_decay, mask=decay_mask)
  return Optimizer(with_clipping(tx, clip_norm), learning_rate)


GIN_CONFIGURABLES = (inverse_sqrt_schedule, linear_warmup_decay,
                     constant_schedule, adafactor, lamb, adamw)
