"""T5 multi-head attention with relative position bias: one entry point, three paths.

`dot_product_attention` computes, per head,
`softmax(q k^T + bias, masked) v` with NO 1/sqrt(d_kv) scaling (T5 folds it
into the query initialisation). The implementation is picked by `impl`:

- "einsum": the plain reference (materialises `[batch, heads, q, k]` logits);
  also used whenever attention-weight dropout is active, since the fused
  kernels have no dropout.
- "xla": `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs for
  half precision when the shapes allow it, XLA's fused path otherwise).
- "blockwise": query-block x key-block online softmax (flash-attention
  style) that never materialises `[heads, q, k]`: the relative-position bias
  and the padding/segment/causal masks are computed per block from positions
  and segment ids, so memory grows linearly with the length (35k-residue
  proteins). Exact to the reference within float32 rounding. Meant for
  inference; it is differentiable, but its backward pass is not
  memory-optimal (scan residuals).

Bias and mask are described by small structs (`RelativeBias`,
`AttentionMask`) so a stack can build them once and either materialise them
once (einsum/xla, shared by all layers as T5 does) or hand them to every layer
for per-block evaluation (blockwise).

Rows with no visible key (e.g. padding queries) produce zeros on every path.
"""
from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from protjax import axes
from protjax.models import layers
from protjax.models.relative_position import relative_position_bucket

IMPLEMENTATIONS = ("einsum", "xla", "blockwise")
# Finite "minus infinity": keeps fully masked rows NaN-free in every dtype we use.
_NEG = -1e30


@flax.struct.dataclass
class RelativeBias:
  """T5 relative position bias, described by the table and the positions.

  Attributes:
    table: `[heads, relpos_buckets]` float.
    q_positions: `[batch|1, q]` int32 positions of the queries.
    k_positions: `[batch|1, k]` int32 positions of the keys.
    bidirectional: encoder (True) or causal decoder (False) bucketing.
    max_distance: distances beyond share the last bucket.
  """
  table: jnp.ndarray
  q_positions: jnp.ndarray
  k_positions: jnp.ndarray
  bidirectional: bool = flax.struct.field(pytree_node=False, default=True)
  max_distance: int = flax.struct.field(pytree_node=False, default=128)

  def block(self, q_pos: jnp.ndarray, k_pos: jnp.ndarray) -> jnp.ndarray:
    """Bias for given positions: `[b, q'] , [b, k'] -> [b, heads, q', k']` float32."""
    buckets = relative_position_bucket(
        k_pos[:, None, :] - q_pos[:, :, None], bidirectional=self.bidirectional,
        num_buckets=self.table.shape[1], max_distance=self.max_distance)  # [b, q', k']
    table = jnp.asarray(self.table, jnp.float32)
    # One gather per head, stacked on axis 1, so that XLA lays the bias out as
    # [b, heads, q', k'], the order in which every layer adds it. One gather
    # over all heads left it as [b*q'*k', heads], read with a stride in every
    # layer: 4% to 11% slower forward (512 to 1,536 tokens, ProtT5-small, CPU).
    return jnp.stack([jnp.take(table[h], buckets) for h in range(table.shape[0])], axis=1)

  def materialize(self) -> jnp.ndarray:
    """`[batch|1, heads, q, k]` float32."""
    return self.block(self.q_positions, self.k_positions)


@flax.struct.dataclass
class AttentionMask:
  """Who may attend to whom, from segment ids (0 = padding).

  Query i sees key j iff `k_segments[j] > 0`, `q_segments[i] == k_segments[j]`
  and, when causal, `j <= i` (by index). Unpacked inputs use segment 1 for
  every real token.

  Attributes:
    q_segments: `[batch, q]` int32.
    k_segments: `[batch, k]` int32.
    causal: decoder self-attention.
  """
  q_segments: jnp.ndarray
  k_segments: jnp.ndarray
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  def block(self, q_seg, k_seg, q_idx, k_idx) -> jnp.ndarray:
    """`[b, q'], [b, k'], [q'], [k'] -> [b, 1, q', k']` bool."""
    visible = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
    if self.causal:
      visible = visible & (k_idx[None, None, :] <= q_idx[None, :, None])
    return visible[:, None]

  def materialize(self) -> jnp.ndarray:
    """`[batch, 1, q, k]` bool."""
    q_len, k_len = self.q_segments.shape[1], self.k_segments.shape[1]
    return self.block(self.q_segments, self.k_segments, jnp.arange(q_len), jnp.arange(k_len))


def _materialized(x):
  return x.materialize() if isinstance(x, (RelativeBias, AttentionMask)) else x


def _einsum_attention(query, key, value, bias, mask, dropout_rate, dropout_rng, dtype):
  """Reference path. Logits and softmax in float32."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + jnp.asarray(bias, jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _NEG)
  m = jnp.max(logits, axis=-1, keepdims=True)
  # Masked logits are _NEG, so exp() makes them exactly 0 in every row that
  # sees a key; rows that see none are zeroed at the end instead of masking p
  # again (one pass less over [q, k]: 6% at 1,536 tokens on CPU).
  p = jnp.exp(logits - m)
  weights = p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-30)
  if dropout_rng is not None and dropout_rate > 0.0:
    weights = layers.dropout(weights, dropout_rate, dropout_rng)
  # Values as [b, h, k, d] and the output as [b, h, q, d], transposed after:
  # "bhqk,bkhd->bqhd" made XLA:CPU transpose the whole [q, k] weight tensor
  # in every layer (ProtT5-small forward 4% to 14% slower, 512 to 1,536 tokens).
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype),
                   jnp.transpose(value, (0, 2, 1, 3)), preferred_element_type=jnp.float32)
  out = jnp.transpose(out, (0, 2, 1, 3))
  if mask is not None:
    out = out * jnp.any(mask, axis=-1)[:, 0, :, None, None]
  return out.astype(dtype)


def _fused_attention(query, key, value, bias, mask, dtype):
  """`jax.nn.dot_product_attention` with scale 1 (T5 has no logit scaling)."""
  use_cudnn = (jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
               and query.shape[-1] % 8 == 0 and query.shape[-1] <= 128)
  out = None
  if use_cudnn:
    try:
      # cuDNN takes the mask most reliably folded into the bias.
      # cuDNN wants the bias in the input dtype (XLA's path keeps it float32).
      cbias = (jnp.asarray(bias, query.dtype) if bias is not None
               else jnp.zeros((1, 1, 1, 1), query.dtype))
      if mask is not None:
        cbias = jnp.where(mask, cbias, jnp.asarray(-1e9 if query.dtype == jnp.bfloat16
                                                    else -6e4, query.dtype))
      out = jax.nn.dot_product_attention(query, key, value, bias=cbias, scale=1.0,
                                         implementation="cudnn")
    except Exception:  # pylint: disable=broad-except  # unsupported shape/version: fall back.
      out = None
  if out is None:
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=1.0)
  if mask is not None:
    # Fully masked rows: zeros, like the reference (the fused path averages).
    out = out * jnp.any(mask, axis=-1)[:, 0, :, None, None].astype(out.dtype)
  return out.astype(dtype)


def _pad_to(x, length, axis, value=0):
  pad = length - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(query, key, value, bias: RelativeBias | None,
                        mask: AttentionMask | None, *, block_size: int = 512,
                        dtype=jnp.float32) -> jnp.ndarray:
  """Memory-efficient exact attention (online softmax over key blocks).

  Args:
    query: `[batch, q, heads, kv]`.
    key, value: `[batch, k, heads, kv]`.
    bias: relative position bias description, or None (cross-attention).
    mask: visibility description, or None (everything visible).
    block_size: query and key block length; lengths need not be multiples.
  Returns:
    `[batch, q, heads, kv]` in `dtype`.
  """
  b, q_len, h, d = query.shape
  k_len = key.shape[1]
  bq = min(block_size, q_len)
  bk = min(block_size, k_len)
  nq, nk = -(-q_len // bq), -(-k_len // bk)
  q_idx = jnp.arange(nq * bq)
  k_idx = jnp.arange(nk * bk)

  def per_batch(x, length):  # [b|1, l] -> [b, l]
    return jnp.broadcast_to(x, (b, x.shape[1]))[:, :length]

  if mask is None:
    q_seg = jnp.ones((b, q_len), jnp.int32)
    k_seg = jnp.ones((b, k_len), jnp.int32)
    causal = False
  else:
    q_seg, k_seg, causal = mask.q_segments, mask.k_segments, mask.causal
  # Padded keys get segment 0 (invisible); padded queries are dropped at the end.
  q_seg = _pad_to(per_batch(q_seg, q_len), nq * bq, 1)
  k_seg = _pad_to(per_batch(k_seg, k_len), nk * bk, 1)
  if bias is not None:
    q_pos = _pad_to(per_batch(bias.q_positions, q_len), nq * bq, 1)
    k_pos = _pad_to(per_batch(bias.k_positions, k_len), nk * bk, 1)
  else:
    q_pos, k_pos = q_seg, k_seg  # unused placeholders with the right shapes

  mask_fn = AttentionMask(q_seg, k_seg, causal)
  # [b, n*blk, ...] -> [n, b, blk, ...] so lax.map / scan iterate over blocks.
  def blocks(x, n, blk):
    return jnp.moveaxis(x.reshape((b, n, blk) + x.shape[2:]), 1, 0)

  qs = blocks(_pad_to(query, nq * bq, 1), nq, bq)
  ks = blocks(_pad_to(key, nk * bk, 1), nk, bk)
  vs = blocks(_pad_to(value, nk * bk, 1), nk, bk)
  k_blocks = (ks, vs, blocks(k_seg, nk, bk), blocks(k_pos, nk, bk), k_idx.reshape(nk, bk))

  def one_query_block(args):
    q_blk, q_seg_blk, q_pos_blk, q_idx_blk = args  # [b, bq, h, d], [b, bq], [b, bq], [bq]

    @jax.checkpoint
    def step(carry, k_args):
      m, l, acc = carry  # [b, h, bq], [b, h, bq], [b, bq, h, d] (float32)
      k_blk, v_blk, k_seg_blk, k_pos_blk, k_idx_blk = k_args
      s = jnp.einsum("bqhd,bkhd->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32)
      if bias is not None:
        s = s + bias.block(q_pos_blk, k_pos_blk)
      visible = mask_fn.block(q_seg_blk, k_seg_blk, q_idx_blk, k_idx_blk)  # [b, 1, bq, bk]
      s = jnp.where(visible, s, _NEG)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      p = jnp.where(visible, jnp.exp(s - m_new[..., None]), 0.0)
      correction = jnp.exp(m - m_new)
      l_new = l * correction + jnp.sum(p, axis=-1)
      pv = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v_blk.dtype), v_blk,
                      preferred_element_type=jnp.float32)
      acc_new = acc * jnp.transpose(correction, (0, 2, 1))[..., None] + pv
      return (m_new, l_new, acc_new), None

    init = (jnp.full((b, h, bq), _NEG, jnp.float32), jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, bq, h, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(step, init, k_blocks)
    out = acc / jnp.maximum(jnp.transpose(l, (0, 2, 1)), 1e-30)[..., None]
    return out.astype(dtype)

  outs = jax.lax.map(one_query_block, (qs, blocks(q_seg, nq, bq), blocks(q_pos, nq, bq),
                                       q_idx.reshape(nq, bq)))  # [nq, b, bq, h, d]
  out = jnp.moveaxis(outs, 0, 1).reshape(b, nq * bq, h, d)
  return out[:, :q_len]


def dot_product_attention(query, key, value, *, bias=None, mask=None, impl: str = "einsum",
                          block_size: int = 512, dropout_rate: float = 0.0,
                          dropout_rng=None, dtype=jnp.float32) -> jnp.ndarray:
  """T5 attention (no logit scaling) through the chosen implementation.

  Args:
    query: `[batch, q, heads, kv]`.
    key, value: `[batch, k, heads, kv]`.
    bias: None, `[batch|1, heads, q, k]` array, or `RelativeBias`.
    mask: None, `[batch|1, 1, q, k]` bool array (True = visible), or `AttentionMask`.
    impl: "einsum" | "xla" | "blockwise".
    dropout_rng: if given (and rate > 0), dropout on the attention weights as
      HF T5 does; forces the einsum path.
  Returns:
    `[batch, q, heads, kv]` in `dtype`.
  """
  assert query.ndim == 4 and key.ndim == 4 and value.ndim == 4, (query.shape, key.shape)
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
  dropout_active = dropout_rng is not None and dropout_rate > 0.0
  if impl == "blockwise" and not dropout_active:
    if not isinstance(bias, (RelativeBias, type(None))) or not isinstance(
        mask, (AttentionMask, type(None))):
      raise ValueError("blockwise attention needs RelativeBias/AttentionMask descriptions, "
                       "not materialised arrays")
    return blockwise_attention(query, key, value, bias, mask, block_size=block_size,
                               dtype=dtype)
  bias, mask = _materialized(bias), _materialized(mask)
  if impl == "xla" and not dropout_active:
    return _fused_attention(query, key, value, bias, mask, dtype)
  return _einsum_attention(query, key, value, bias, mask, dropout_rate,
                           dropout_rng if dropout_active else None, dtype)


def token_segments(tokens: jnp.ndarray, segment_ids: jnp.ndarray | None) -> jnp.ndarray:
  """Attention segments `[batch, length]`: segment id (or 1) for tokens, 0 for padding (id 0)."""
  seg = jnp.ones_like(tokens, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  return jnp.where(tokens > 0, seg, 0)


def positions_or_arange(length: int, positions: jnp.ndarray | None) -> jnp.ndarray:
  """`[batch|1, length]` int32 positions (arange when unpacked)."""
  if positions is None:
    return jnp.arange(length, dtype=jnp.int32)[None]
  return positions.astype(jnp.int32)


class MultiHeadAttention(nn.Module):
  """Attention block: q/k/v projections `[embed, heads, kv]`, out `[heads, kv, embed]`.

  T5 (the defaults): no biases, no logit scaling (t5x folds 1/sqrt(d_kv) into
  the query initialisation). BERT: biases on all four projections and the
  projected queries multiplied by `query_scale` (1/sqrt(d_kv)), which is the
  same as scaling the logits, so every `impl` computes BERT unchanged.

  Attributes:
    num_heads, d_kv: head count and size.
    dropout_rate: on the attention weights (training only).
    impl, block_size: see `dot_product_attention`.
    dtype: compute dtype.
    use_bias: biases `[heads, kv]` on q/k/v and `[embed]` on the output.
    query_scale: multiplies the projected queries; None leaves them as they are.
    kernel_init: initializer of all four kernels; None: t5x's fan-in
      initialisation (queries additionally / sqrt(d_kv)).
  """
  num_heads: int
  d_kv: int
  dropout_rate: float = 0.1
  impl: str = "einsum"
  block_size: int = 512
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = False
  query_scale: float | None = None
  kernel_init: layers.Initializer | None = None

  @nn.compact
  def __call__(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray, *, bias=None, mask=None,
               deterministic: bool = True) -> jnp.ndarray:
    """`[batch, q, embed]`, `[batch, k, embed]` -> `[batch, q, embed]`."""
    assert inputs_q.ndim == 3 and inputs_kv.ndim == 3, (inputs_q.shape, inputs_kv.shape)
    d_model = inputs_q.shape[-1]
    qkv_axes = (axes.EMBED, axes.HEADS, axes.KV)
    if self.kernel_init is None:
      # t5x folds the 1/sqrt(d_kv) logit scaling into the query initialisation.
      base_init = layers.fan_in_init(1.0, "normal", num_in_axes=1)
      query_init = lambda k, s, d=jnp.float32: base_init(k, s, d) / jnp.sqrt(self.d_kv).astype(d)
      out_init = layers.fan_in_init(1.0, "normal", num_in_axes=2)
    else:
      base_init = query_init = out_init = self.kernel_init
    proj = functools.partial(layers.DenseGeneral, features=(self.num_heads, self.d_kv),
                             kernel_axes=qkv_axes, dtype=self.dtype, use_bias=self.use_bias)
    q = proj(kernel_init=query_init, name="query")(inputs_q)
    k = proj(kernel_init=base_init, name="key")(inputs_kv)
    v = proj(kernel_init=base_init, name="value")(inputs_kv)
    if self.query_scale is not None:
      q = q * jnp.asarray(self.query_scale, q.dtype)
    act = (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, axes.ACT_KV)
    q = layers.with_sharding_constraint(q, act)
    k = layers.with_sharding_constraint(k, act)
    v = layers.with_sharding_constraint(v, act)
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    x = dot_product_attention(q, k, v, bias=bias, mask=mask, impl=self.impl,
                              block_size=self.block_size, dropout_rate=self.dropout_rate,
                              dropout_rng=dropout_rng, dtype=self.dtype)  # [b, q, h, d]
    x = layers.with_sharding_constraint(x, act)
    out = layers.DenseGeneral(d_model, kernel_axes=(axes.HEADS, axes.KV, axes.EMBED),
                              num_in_axes=2, dtype=self.dtype, kernel_init=out_init,
                              use_bias=self.use_bias, name="out")(x)
    return out
