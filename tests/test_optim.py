"""Optimisers, schedules, weight-decay masks, clipping, micro-batch accumulation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from protjax import optim, trainer

import trainer_toy


def test_inverse_sqrt_schedule_is_mesh_tf_rsqrt_decay():
  lr = optim.inverse_sqrt_schedule(0.01, 10_000)
  # 1/sqrt(max(step, 10000)): constant 0.01 through the warm-up, then decay.
  for step, want in ((0, 0.01), (5_000, 0.01), (10_000, 0.01),
                     (40_000, 0.005), (1_000_000, 0.001)):
    np.testing.assert_allclose(float(lr(step)), want, rtol=1e-6)
    np.testing.assert_allclose(float(lr(step)),
                               1 / np.sqrt(max(step, 10_000)), rtol=1e-6)
  ramp = optim.inverse_sqrt_schedule(0.01, 100, linear_warmup=True)
  np.testing.assert_allclose(float(ramp(49)), 0.005, rtol=1e-6)
  np.testing.assert_allclose(float(ramp(400)), 0.005, rtol=1e-6)


def test_linear_warmup_decay():
  lr = optim.linear_warmup_decay(2e-3, warmup_steps=100, total_steps=1100)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 50, 100, 600, 1100)],
      [0.0, 1e-3, 2e-3, 1e-3, 0.0], atol=1e-9)
  with pytest.raises(ValueError):
    optim.linear_warmup_decay(1e-3, warmup_steps=10, total_steps=10)


def test_adafactor_factors_second_moments():
  params = {"w": jnp.ones((256, 128)), "b": jnp.ones((256,))}
  opt = optim.adafactor()
  state = opt.tx.init(params)
  factored = state[0]
  assert {factored.v_row["w"].shape, factored.v_col["w"].shape} == {
      (256,), (128,)}  # row and column means
  assert factored.v["w"].shape == (1,)       # no full-size accumulator
  assert factored.v["b"].shape == (256,)     # vectors keep a full one
  # ProtT5: base rate 0.01, no weight decay, update clipping 1.0.
  np.testing.assert_allclose(float(opt.schedule(0)), 0.01)
  grads = {"w": jnp.full((256, 128), 3.0), "b": jnp.zeros((256,))}
  updates, _ = opt.tx.update(grads, state, params)
  # Parameter RMS is 1 and clipped, normalised updates have RMS 1, so
  # each entry moves by -lr.
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.01, rtol=1e-4)


def test_weight_decay_mask_skips_vectors():
  params = {"kernel": jnp.ones((4, 4)), "scale": jnp.ones((4,))}
  assert optim.decay_mask(params) == {"kernel": True, "scale": False}
  for make in (optim.lamb, optim.adamw):
    opt = make(optim.constant_schedule(0.1), weight_decay=0.5)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.tx.update(zero, opt.tx.init(params), params)
    assert float(jnp.abs(updates["scale"]).max()) == 0.0, make
    assert float(updates["kernel"][0, 0]) < 0.0, make


def test_lamb_trust_ratio_on_matrices_only():
  # BERT's and ALBERT's LAMB: a matrix moves by lr x its norm; a bias by
  # Adam's step x lr, however small it is (optax.lamb would move this one by
  # lr x 0.001, and a zero-initialised bias would grow only by (1 + lr) a step).
  params = {"kernel": jnp.full((4, 4), 2.0), "bias": jnp.full((4,), 1e-3)}
  opt = optim.lamb(optim.constant_schedule(0.1), weight_decay=0.0, clip_norm=0.0)
  grads = {"kernel": jnp.full((4, 4), 1e-3), "bias": jnp.ones((4,))}
  updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
  np.testing.assert_allclose(float(jnp.linalg.norm(updates["kernel"])),
                             0.1 * float(jnp.linalg.norm(params["kernel"])), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["bias"]), -0.1, rtol=1e-4)


def test_gradient_clipping():
  params = {"w": jnp.zeros((3,))}
  grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50
  sgd = optim.with_clipping(optax.sgd(1.0), clip_norm=1.0)
  updates, _ = sgd.update(grads, sgd.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-0.6, -0.8, 0.0],
                             rtol=1e-6)
  small = {"w": jnp.array([0.3, 0.4, 0.0])}  # under the threshold: unchanged
  updates, _ = sgd.update(small, sgd.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-0.3, -0.4, 0.0],
                             rtol=1e-6)
  off = optim.with_clipping(optax.sgd(1.0), clip_norm=0.0)
  updates, _ = off.update(grads, off.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-30.0, -40.0, 0.0])


def test_microbatch_accumulation_equals_full_batch():
  model = trainer_toy.ToyModel()
  data = trainer_toy.ToyData(batch_size=8, seed=5)
  batch = {k: jnp.asarray(v) for k, v in data.batch(0).items()}
  # Rows have different lengths, so micro-batches weigh differently.
  assert len(set(np.asarray(batch["encoder_loss_weights"]).sum(1))) > 1
  params = model.init_variables(jax.random.PRNGKey(0),
                                {"encoder_input_tokens": (8, 12)})["params"]
  accumulate = jax.jit(
      lambda p, b, n: trainer.accumulate_gradients(model.loss_fn, p, b, None,
                                                   n), static_argnums=2)
  full_grads, full_m = accumulate(params, batch, 1)
  grads, m = accumulate(params, batch, 4)
  np.testing.assert_allclose(m["loss"], full_m["loss"], rtol=1e-5)
  assert float(m["num_tokens"]) == float(full_m["num_tokens"])
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-6)
  split = trainer.split_microbatches(batch, 4)
  assert split["encoder_input_tokens"].shape == (4, 2, 12)
  np.testing.assert_array_equal(split["encoder_input_tokens"][1, 0],
                                batch["encoder_input_tokens"][1])
