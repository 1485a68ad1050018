"""Segment-level recurrence and relative attention, shared by Transformer-XL and XLNet.

What ProtTXL (`protjax.models.transfo_xl`) and ProtXLNet share, so neither
holds a copy: Dai et al.'s relative positional encoding (sinusoids of the
relative distance, projected per layer, with the learned global biases u =
`r_w_bias` on the content term and v = `r_r_bias` on the position term), the
shift that turns a `[query, relative position]` score into a `[query, key]`
one, the attention core over `[memory; current segment]`, and the memory:
the previous segments' per-layer hidden states, without gradient, bounded by
`mem_len`.

Attention score of query i and key j (both heads and batch implicit), with
q_i the projected query, k_j the projected key (memory keys first), R_d the
projected sinusoid of relative distance d:

  score(i, j) = scale * ((q_i + u) . k_j + (q_i + v) . R_{pos(i, j)} + extra(i, j))

`extra` is what a family adds (XLNet: its segment term). The positions are
the caller's: a sequence `pos_seq` of relative distances, one per column of
the projected R, and `offset` such that column `j + offset - i` of R holds
the distance of (i, j):

  Transformer-XL: pos_seq = klen-1, ..., 0       (`txl_positions`), offset qlen-1
  XLNet ("bi"):   pos_seq = klen, ..., -qlen+1   (`xlnet_positions`), offset qlen

where klen = mem_len + qlen. Columns for pairs outside the sequence's range
hold garbage (as the references' shifts): mask those pairs.

The memory (`Memory`): `states [batch, layers, mem_len, embed]` (the input of
each layer for the last `mem_len` positions) and `segments [batch, mem_len]`
(each slot's protein segment id; 0 for slots not filled yet, so a first
segment attends to nothing before it; Hugging Face's `TransfoXLModel`
instead attends to `mem_len` zero vectors on its first segment, which
`Memory.zeros(..., valid=True)` reproduces).
Batch first, so the trainer's micro-batch split and batch sharding apply to
it as to any `[batch, ...]` array.

Recurrent state in training (`protjax.trainer`): a Model with
`init_model_state(batch_shapes)` keeps a state in `TrainState.model_state`,
checkpointed beside params and optimiser state (item `model_state/`) so that
kill -9 and resume stays bitwise; its `loss_fn(params, batch, rng,
model_state=...)` returns `(loss, (metrics, new_model_state))`.
`model_state_axes()` names each state leaf's logical axes (for sharding).
Families without it (ProtT5, BERT, ELECTRA) are unchanged.
"""
from __future__ import annotations

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from protjax import axes
from protjax.models import layers

# Finite "minus infinity" (the references' -1e30 for float32 masking).
NEG_INF = -1e30

# Logical axes of the memory (activations: never named by a weight rule).
MEMORY_AXES = (axes.BATCH, axes.ACT_LAYERS, axes.MEM_LENGTH, axes.ACT_EMBED)
MEMORY_SEGMENT_AXES = (axes.BATCH, axes.MEM_LENGTH)


# ----------------------------------------------------------------------------- positions

def txl_positions(klen: int) -> jnp.ndarray:
  """Transformer-XL's relative distances `[klen]` float32: klen-1, ..., 0."""
  return jnp.arange(klen - 1, -1, -1, dtype=jnp.float32)


def xlnet_positions(klen: int, qlen: int) -> jnp.ndarray:
  """XLNet's bidirectional relative distances `[klen + qlen]` float32: klen, ..., -qlen+1."""
  return jnp.arange(klen, -qlen, -1, dtype=jnp.float32)


def sinusoid_embedding(pos_seq: jnp.ndarray, dim: int, clamp_len: int = -1) -> jnp.ndarray:
  """`[r]` distances -> `[r, dim]` float32: `[sin(d * f), cos(d * f)]` (sines first).

  Frequencies f_k = 10000^(-2k / dim), k < dim / 2, as both references.
  `clamp_len` > 0 clamps |d| to it first (their `clamp_len`).
  """
  if dim % 2:
    raise ValueError(f"sinusoid dimension must be even, got {dim}")
  if clamp_len > 0:
    pos_seq = jnp.clip(pos_seq, -clamp_len, clamp_len)
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0.0, dim, 2.0, dtype=jnp.float32) / dim))
  angles = jnp.asarray(pos_seq, jnp.float32)[:, None] * inv_freq[None, :]  # [r, dim/2]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def rel_shift(x: jnp.ndarray, klen: int, offset: int) -> jnp.ndarray:
  """`[..., q, r]` -> `[..., q, klen]` with `out[..., i, j] = x[..., i, j + offset - i]`.

  The references' pad-and-reshape shift (TXL's `_rel_shift`: offset q-1;
  XLNet's `rel_shift_bnij`: offset q), written once for any offset: pad one
  zero column in front, flatten the last two axes, drop `offset + 1`
  elements, fold back. Entries whose column `j + offset - i` falls outside
  `[0, r)` are whatever the fold lands on (masked by every caller).
  """
  q, r = x.shape[-2], x.shape[-1]
  lead = x.shape[:-2]
  padded = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])  # [..., q, r+1]
  flat = padded.reshape(lead + (q * (r + 1),))
  start = offset + 1
  flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, start)])
  shifted = jax.lax.slice_in_dim(flat, start, start + q * r, axis=-1).reshape(lead + (q, r))
  if klen > r:
    raise ValueError(f"rel_shift: klen {klen} exceeds the {r} position columns")
  return shifted[..., :klen]


# ----------------------------------------------------------------------------- attention core

class RelativeBiases(nn.Module):
  """The learned global biases u (`r_w_bias`) and v (`r_r_bias`), `[heads, kv]` each.

  One instance per layer (`untie_r`, as Hugging Face's default) or one shared
  by the stack; initialised normal(`init_std`) as the references.
  """
  num_heads: int
  head_dim: int
  init_std: float = 0.02

  @nn.compact
  def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    init = nn.initializers.normal(stddev=self.init_std)
    shape = (self.num_heads, self.head_dim)
    r_w = layers.param_with_axes("r_w_bias", init, shape, jnp.float32, axes=(axes.HEADS, axes.KV))
    r_r = layers.param_with_axes("r_r_bias", init, shape, jnp.float32, axes=(axes.HEADS, axes.KV))
    return r_w, r_r


def relative_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, r: jnp.ndarray,
                       r_w_bias: jnp.ndarray, r_r_bias: jnp.ndarray, mask: jnp.ndarray, *,
                       offset: int, scale: float, extra_logits: Optional[jnp.ndarray] = None,
                       dropout_rate: float = 0.0, dropout_rng: Optional[jax.Array] = None,
                       dtype=jnp.float32) -> jnp.ndarray:
  """The relative attention core (see the module docstring for the score).

  Args:
    q: `[batch, q, heads, kv]` projected queries (current segment).
    k, v: `[batch, k, heads, kv]` projected keys and values over
      `[memory; current segment]` (k = mem_len + q for TXL).
    r: `[r, heads, kv]` projected relative-position encodings, one row per
      entry of the caller's `pos_seq`.
    r_w_bias, r_r_bias: `[heads, kv]` u and v.
    mask: `[batch|1, 1|heads, q, k]` bool, True = visible.
    offset: column `j + offset - i` of r holds the distance of (i, j).
    scale: multiplies the summed logits (1 / sqrt(kv) in both references).
    extra_logits: `[batch, heads, q, k]` added before scaling (XLNet's
      segment term), or None.
    dropout_rate, dropout_rng: dropout on the attention probabilities
      (training); no rng means none.
  Returns:
    `[batch, q, heads, kv]` in `dtype`. Logits and softmax in float32.
  """
  assert q.ndim == 4 and k.ndim == 4 and v.ndim == 4 and r.ndim == 3, (
      q.shape, k.shape, v.shape, r.shape)
  f32 = jnp.float32
  qf = jnp.asarray(q, f32)
  # [b, q, h, d] . [b, k, h, d] -> [b, h, q, k]
  ac = jnp.einsum("bqhd,bkhd->bhqk", qf + jnp.asarray(r_w_bias, f32), k,
                  preferred_element_type=f32)
  # [b, q, h, d] . [r, h, d] -> [b, h, q, r] -> shifted [b, h, q, k]
  bd = jnp.einsum("bqhd,rhd->bhqr", qf + jnp.asarray(r_r_bias, f32), r,
                  preferred_element_type=f32)
  bd = rel_shift(bd, k.shape[1], offset)
  logits = ac + bd
  if extra_logits is not None:
    logits = logits + jnp.asarray(extra_logits, f32)
  logits = logits * scale
  logits = jnp.where(mask, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    weights = layers.dropout(weights, dropout_rate, dropout_rng)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=f32)
  return out.astype(dtype)


def causal_mask(mem_segments: jnp.ndarray, segments: jnp.ndarray) -> jnp.ndarray:
  """Transformer-XL's visibility over `[memory; segment]`: `[batch, 1, q, m + q]` bool.

  Query i of the current segment sees a memory slot or a segment position
  j' <= i holding the same protein segment id (> 0; 0 = empty / padding).
  `mem_segments` `[batch, m]`, `segments` `[batch, q]` int32 (one protein per
  row, or a whole stream: all 1).
  """
  q = segments.shape[1]
  keys = jnp.concatenate([mem_segments, segments], axis=1)  # [b, m + q]
  m = mem_segments.shape[1]
  causal = jnp.arange(m + q)[None, :] <= (m + jnp.arange(q))[:, None]  # [q, m + q]
  same = (segments[:, :, None] == keys[:, None, :]) & (keys[:, None, :] > 0)  # [b, q, m + q]
  return (same & causal[None])[:, None]


# ----------------------------------------------------------------------------- memory

@flax.struct.dataclass
class Memory:
  """The recurrent memory of a stack (a pytree: carried across segments and steps).

  Attributes:
    states: `[batch, layers, mem_len, embed]`: each layer's input over the
      last `mem_len` positions (oldest first), without gradient.
    segments: `[batch, mem_len]` int32: each slot's segment id (0: empty).
  """
  states: jnp.ndarray
  segments: jnp.ndarray

  @property
  def mem_len(self) -> int:
    return self.states.shape[2]

  @classmethod
  def zeros(cls, batch: int, num_layers: int, mem_len: int, hidden: int, dtype=jnp.float32,
            valid: bool = False) -> "Memory":
    """An empty memory (`valid=False`), or Hugging Face's attended zeros (`valid=True`:
    segment 1, as every position of an unpacked row)."""
    return cls(states=jnp.zeros((batch, num_layers, mem_len, hidden), dtype),
               segments=jnp.full((batch, mem_len), int(valid), jnp.int32))

  def layer(self, i: int) -> jnp.ndarray:
    """Layer i's memory `[batch, mem_len, embed]`."""
    return self.states[:, i]

  def constrained(self) -> "Memory":
    """With the logical-axis sharding constraints (batch over `data`)."""
    return Memory(layers.with_sharding_constraint(self.states, MEMORY_AXES),
                  layers.with_sharding_constraint(self.segments, MEMORY_SEGMENT_AXES))


def update_memory(memory: Memory, layer_inputs: jnp.ndarray, segments: jnp.ndarray) -> Memory:
  """The memory after a segment: the last `mem_len` positions of `[memory; segment]`.

  Args:
    memory: before the segment.
    layer_inputs: `[batch, layers, q, embed]`, each layer's input over the segment.
    segments: `[batch, q]` int32 segment ids of the segment's positions (0: padding).
  Returns:
    The new Memory (same shapes and dtype), with `stop_gradient`: no gradient
    crosses a segment boundary (Dai et al.).
  """
  m = memory.mem_len
  states = jnp.concatenate([memory.states, layer_inputs.astype(memory.states.dtype)], axis=2)
  seg = jnp.concatenate([memory.segments, segments.astype(jnp.int32)], axis=1)
  states = jax.lax.stop_gradient(states[:, :, states.shape[2] - m:])
  return Memory(states, seg[:, seg.shape[1] - m:]).constrained()
