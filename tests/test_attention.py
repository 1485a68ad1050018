"""Attention paths agree with the einsum reference (values and gradients)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax.models import attention as attn
from protjax.models.relative_position import relative_position_bucket

B, H, D = 2, 3, 8
# Jitted once per static configuration: eager op-by-op dispatch is slow on CPU.
_attention = jax.jit(attn.dot_product_attention,
                     static_argnames=("impl", "block_size", "dropout_rate", "dtype"))
TOL = dict(rtol=2e-5, atol=2e-5)


def _qkv(q_len, k_len, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (B, q_len, H, D))
  k = jax.random.normal(keys[1], (B, k_len, H, D))
  v = jax.random.normal(keys[2], (B, k_len, H, D))
  # Large table entries so a wrong bucket changes the result visibly.
  table = 3.0 * jax.random.normal(keys[3], (H, 32))
  return q, k, v, table


def _packed_segments(length):
  """Row 0: one protein then padding; row 1: three packed proteins then padding."""
  seg = np.zeros((B, length), np.int32)
  pos = np.zeros((B, length), np.int32)
  seg[0, :length - 5] = 1
  pos[0, :length - 5] = np.arange(length - 5)
  bounds = [0, length // 4, length // 2, length - 3]
  for s in range(3):
    seg[1, bounds[s]:bounds[s + 1]] = s + 1
    pos[1, bounds[s]:bounds[s + 1]] = np.arange(bounds[s + 1] - bounds[s])
  return jnp.asarray(seg), jnp.asarray(pos)


def _self_attention_inputs(length, bidirectional, causal):
  q, k, v, table = _qkv(length, length)
  seg, pos = _packed_segments(length)
  bias = attn.RelativeBias(table, pos, pos, bidirectional=bidirectional, max_distance=12)
  mask = attn.AttentionMask(seg, seg, causal=causal)
  return q, k, v, bias, mask


def test_relative_bias_gathers_the_bucket_of_each_distance():
  table = jnp.arange(2 * 32, dtype=jnp.float32).reshape(2, 32)
  pos = jnp.arange(40)[None]
  bias = attn.RelativeBias(table, pos, pos, bidirectional=True).materialize()
  assert bias.shape == (1, 2, 40, 40)
  rel = np.arange(40)[None, :] - np.arange(40)[:, None]
  buckets = np.asarray(relative_position_bucket(rel, bidirectional=True))
  np.testing.assert_array_equal(np.asarray(bias[0, 1]), 32 + buckets)
  # Key just after / before the query: bucket 17 / 1 in the bidirectional split.
  assert bias[0, 0, 5, 6] == 17 and bias[0, 0, 5, 4] == 1


@pytest.mark.parametrize("length,block", [(37, 8), (32, 8), (11, 16)])
@pytest.mark.parametrize("bidirectional,causal", [(True, False), (False, True)])
def test_blockwise_matches_reference(length, block, bidirectional, causal):
  q, k, v, bias, mask = _self_attention_inputs(length, bidirectional, causal)
  ref = _attention(q, k, v, bias=bias, mask=mask, impl="einsum")
  out = _attention(q, k, v, bias=bias, mask=mask, impl="blockwise",
                                   block_size=block)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **TOL)
  # Padding rows (segment 0) see no key and give zeros on both paths.
  seg = np.asarray(mask.q_segments)
  assert np.all(np.asarray(out)[seg == 0] == 0.0)
  assert np.all(np.asarray(ref)[seg == 0] == 0.0)
  assert np.abs(np.asarray(ref)[seg > 0]).mean() > 0.1


@pytest.mark.parametrize("bidirectional,causal", [(True, False), (False, True)])
def test_fused_matches_reference(bidirectional, causal):
  q, k, v, bias, mask = _self_attention_inputs(29, bidirectional, causal)
  ref = _attention(q, k, v, bias=bias, mask=mask, impl="einsum")
  out = _attention(q, k, v, bias=bias.materialize(), mask=mask.materialize(),
                                   impl="xla")
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **TOL)


def test_cross_attention_without_bias_all_paths_agree():
  q, k, v, _ = _qkv(11, 19, seed=3)
  q_seg = jnp.asarray([[1] * 11, [1] * 6 + [2] * 5])
  k_seg = jnp.asarray([[1] * 15 + [0] * 4, [1] * 9 + [2] * 8 + [0] * 2])
  mask = attn.AttentionMask(q_seg, k_seg)
  ref = _attention(q, k, v, mask=mask, impl="einsum")
  for impl, block in (("xla", 0), ("blockwise", 4), ("blockwise", 64)):
    out = _attention(q, k, v, mask=mask, impl=impl, block_size=max(block, 1))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **TOL, err_msg=impl)
  # Reference check by hand for one query: softmax over its visible keys.
  logits = np.einsum("hd,khd->hk", np.asarray(q[1, 8]), np.asarray(k[1]))
  visible = np.asarray(k_seg[1]) == 2
  w = np.exp(logits - logits.max(-1, keepdims=True)) * visible
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(ref[1, 8]), np.einsum("hk,khd->hd", w, np.asarray(v[1])),
                             **TOL)


def test_blockwise_gradients_match_reference():
  q, k, v, bias, mask = _self_attention_inputs(21, True, False)
  w = jax.random.normal(jax.random.PRNGKey(9), q.shape)

  def loss(impl, q, k, v, table):
    b = bias.replace(table=table)
    return jnp.sum(w * _attention(q, k, v, bias=b, mask=mask, impl=impl,
                                                  block_size=8))

  grad = lambda impl: jax.jit(jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2, 3)))
  ref = grad("einsum")(q, k, v, bias.table)
  out = grad("blockwise")(q, k, v, bias.table)
  for r, o in zip(ref, out):
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-4, atol=1e-4)


def test_blockwise_memory_is_linear_in_length():
  """Compiled temp memory of blockwise grows ~linearly; the reference grows ~quadratically."""
  def temp_bytes(impl, length):
    q = jax.ShapeDtypeStruct((1, length, 2, 8), jnp.float32)
    table = jax.ShapeDtypeStruct((2, 32), jnp.float32)

    def f(q, table):
      pos = jnp.arange(length)[None]
      seg = jnp.ones((1, length), jnp.int32)
      return attn.dot_product_attention(
          q, q, q, bias=attn.RelativeBias(table, pos, pos), mask=attn.AttentionMask(seg, seg),
          impl=impl, block_size=128)
    return jax.jit(f).lower(q, table).compile().memory_analysis().temp_size_in_bytes

  small, large = 1024, 4096
  block_ratio = temp_bytes("blockwise", large) / temp_bytes("blockwise", small)
  assert block_ratio < 6, block_ratio  # 4x length -> ~4x memory
  # The reference holds at least one [heads, q, k] float32 tensor (how many
  # more depends on XLA's buffer reuse); blockwise a small fraction of one.
  scores_bytes = 2 * large * large * 4
  assert temp_bytes("einsum", large) >= scores_bytes
  assert temp_bytes("blockwise", large) < scores_bytes / 16


def test_dropout_on_attention_weights():
  q, k, v, bias, mask = _self_attention_inputs(16, True, False)
  det = _attention(q, k, v, bias=bias, mask=mask, impl="blockwise")
  kw = dict(bias=bias, mask=mask, impl="blockwise", dropout_rate=0.5)
  a = _attention(q, k, v, dropout_rng=jax.random.PRNGKey(1), **kw)
  b = _attention(q, k, v, dropout_rng=jax.random.PRNGKey(1), **kw)
  c = _attention(q, k, v, dropout_rng=jax.random.PRNGKey(2), **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2
  assert np.abs(np.asarray(a) - np.asarray(det)).max() > 1e-2
  # Inverted dropout keeps the expectation: averaging many masks approaches det.
  many = jax.jit(jax.vmap(lambda r: _attention(q, k, v, dropout_rng=r, **kw)))(
      jax.random.split(jax.random.PRNGKey(3), 64)).mean(0)
  valid = np.asarray(mask.q_segments) > 0
  assert np.abs(np.asarray(many - det))[valid].mean() < 0.2 * np.abs(np.asarray(det))[valid].mean()


def test_rejects_unknown_impl_and_materialised_blockwise_inputs():
  q, k, v, bias, mask = _self_attention_inputs(8, True, False)
  with pytest.raises(ValueError, match="impl"):
    _attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="blockwise"):
    _attention(q, k, v, bias=bias.materialize(), impl="blockwise")
