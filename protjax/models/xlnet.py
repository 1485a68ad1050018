"""ProtXLNet: XLNet's two-stream relative attention and the permutation LM, in Flax linen.

The layout is Hugging Face's `XLNetModel` / `XLNetLMHeadModel`, so weights
map one to one (`protjax.hf.xlnet`). Relative positions, the attention core
over `[memory; segment]` and the memory are `protjax.models.recurrence`'s
(shared with ProtTXL); this module adds what only XLNet has:

- XLNet's bidirectional relative distances (`klen, ..., -qlen+1`, the
  references' `attn_type="bi"`), projected per layer by `r`, with the
  per-layer biases u (`r_w_bias`) and v (`r_r_bias`) (`untie_r`);
- the segment encoding: a learned `seg_embed [2, heads, kv]` and bias
  `r_s_bias`, adding `(q_i + r_s_bias) . seg_embed[s_ij]` with s_ij = 1 when
  query and key lie in different segments (token types). protjax reads one
  protein per segment, so every pair is "same" and the term is a constant per
  query row, which the softmax ignores: like Hugging Face when no
  `token_type_ids` are given, it is computed only when token types are;
- two-stream attention: the content stream h (token + context, sees itself)
  and the query stream g (starts from the learned `mask_emb`, sees only what
  precedes its position in the factorisation order, never its own token),
  both reading keys and values from the content stream; the query stream is
  evaluated at the target positions only (`target_mapping`);
- the output layer tied to the word embedding, plus a bias (`lm_loss`).

Post-LayerNorm blocks as XLNet: `LN(x + dropout(o(attention)))`, then
`LN(x + dropout(layer_2(dropout(act(layer_1(x))))))`, for each stream with
the same weights. Dropout (Table 2: 0.1) after the word and mask embeddings,
on the relative encodings, on the attention probabilities, after `o`, inside
and after the feed-forward, and on the last stream before the head, as HF.

Parameter tree (`variables["params"]`; every parameter made with
`param_with_axes`; `L` = `layers_{i}`):

  word_embedding/embedding                  [vocab, embed]
  mask_emb                                  [embed]
  L/rel_attn/{q,k,v,r}/kernel               [embed, heads, kv]
  L/rel_attn/o/kernel                       [heads, kv, embed]
  L/rel_attn/biases/{r_w_bias,r_r_bias}     [heads, kv]
  L/rel_attn/r_s_bias                       [heads, kv]
  L/rel_attn/seg_embed                      [token_types, heads, kv]   [2, h, d]
  L/rel_attn/layer_norm/{scale,bias}        [embed]
  L/ff/layer_1/kernel, bias                 [embed, mlp], [mlp]
  L/ff/layer_2/kernel, bias                 [mlp, embed], [embed]
  L/ff/layer_norm/{scale,bias}              [embed]
  lm_loss/bias                              [vocab]           (XLNetLMHeadModel only)

`XLNetEncoder` (HF `XLNetModel`, what protjax-embed runs) has everything but
`lm_loss`. It returns the last layer's content stream; an input longer than
`target_length` is read segment by segment, each attending to the previous
`mem_len` positions' per-layer states (the memory), so a protein of any
length embeds in memory bounded by the segment and memory lengths. Inside a
segment attention is bidirectional; across segments a position sees only
the memory, i.e. the `mem_len` positions before its segment, whose states
carry, layer by layer, what those positions saw in turn (the references'
recurrence). Packed rows: segment ids (0 = padding) restrict attention to
the same protein, memory included; relative positions need no restart per
protein. Training windows are one segment each: the memory is not carried
across training steps (the trainer's recurrent state, ProtTXL's, is unused).

The objective (`permutation_targets`, `PermutationLMModel.loss_fn`), as
XLNet's `data_utils._local_perm` builds it, drawn on the device from the
step's rng (`fold_in(seed rng, step)`: deterministic on resume):
1. a uniformly random factorisation order of every example's tokens;
2. partial prediction: the last `ceil(n / K)` residues of each protein's
   order (K = `partial_prediction`, 6 as XLNet) are the targets; the other
   residues are context, placed before every target (XLNet's rank -1);
   [SEP] and [CLS] are never targets (XLNet's functional tokens);
3. `perm_mask[i, j]` (True: i may not see j) when j is a target or a
   functional token not earlier than i in the order (a target never sees
   itself, a functional token does); context residues see only context;
4. `target_mapping [num_predict, length]` one-hot rows of the targets in
   position order (zero rows pad it), num_predict = ceil(length / K);
5. cross-entropy of the query stream's logits at the targets.
XLNet's span sampling (n-grams up to 5 forming the targets) and its two
half-length permutation blocks (`reuse_len`) are not reproduced: one
permutation covers the window, and the targets are single positions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protjax import axes
from protjax.errors import InputError
from protjax.models import attention as attn_lib
from protjax.models import bert
from protjax.models import electra
from protjax.models import layers
from protjax.models import recurrence
from protjax.models import t5

GIN_DIR = t5.GIN_DIR
CONFIG_NAMES = ("protxlnet_tiny", "protxlnet_small", "protxlnet_paper", "protxlnet_mini_wide")
# XLNet's functional tokens in the ProtBert vocabulary: [SEP] (3) and [CLS] (2).
FUNCTIONAL_IDS = (3, 2)
_PURPOSE_PERMUTATION, _PURPOSE_DROPOUT = 1, 2


@dataclasses.dataclass(frozen=True)
class XLNetConfig:
  """Architecture of one ProtXLNet size (every default declared here, once).

  Attributes:
    vocab_size: token ids (the ProtBert vocabulary: 30).
    hidden_size: `d_model`, width of both streams (`embed`).
    num_layers: `n_layer`.
    num_heads: `n_head`; the head size is hidden_size / num_heads.
    intermediate_size: `d_inner`, the feed-forward width (`mlp`).
    hidden_act: `ff_activation`, "gelu" (exact, XLNet's) | "gelu_new".
    layer_norm_epsilon: 1e-12, as XLNet.
    dropout_rate: every dropout (Table 2: 0.1).
    initializer_range: std of the normal initialisation of every weight.
    target_length: the segment length (Table 2: 512): training windows, and
      the length embedding reads a longer input in.
    mem_len: positions of memory a segment attends to beyond itself (384).
    clamp_len: relative distances are clamped to it; -1: not clamped.
    partial_prediction: K: the last 1/K of each protein's factorisation
      order is predicted (6, as XLNet).
    dtype: compute dtype, "float32" | "bfloat16" | "float16" | "auto".
      Attention logits and the softmax are always float32.
    attention_impl: accepted for the shared road ("einsum" | "xla" |
      "blockwise"); XLNet's relative attention has one path (einsum), and a
      long input is bounded by the memory, not by blockwise attention.
    attention_block_size: unused (the shared configs' field).
    remat: rematerialise each layer in the backward pass.
  """
  vocab_size: int = 30
  hidden_size: int = 1024
  num_layers: int = 30
  num_heads: int = 16
  intermediate_size: int = 4096
  hidden_act: str = "gelu"
  layer_norm_epsilon: float = 1e-12
  dropout_rate: float = 0.1
  initializer_range: float = 0.02
  target_length: int = 512
  mem_len: int = 384
  clamp_len: int = -1
  partial_prediction: int = 6
  dtype: str = "float32"
  attention_impl: str = "einsum"
  attention_block_size: int = 512
  remat: bool = False

  def __post_init__(self):
    layers.check_compute_options(self.dtype, self.attention_impl, attn_lib.IMPLEMENTATIONS)
    if self.hidden_act not in bert.ACTIVATIONS:
      raise ValueError(f"hidden_act must be one of {bert.ACTIVATIONS}, got {self.hidden_act!r}")
    layers.check_positive_ints(self, (
        "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
        "target_length", "partial_prediction", "attention_block_size"))
    for name in ("mem_len", "clamp_len"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"XLNetConfig.{name} must be an integer >= -1, got {value!r}")
    layers.check_divisible(self, "hidden_size", "num_heads")
    if self.hidden_size % 2:
      raise ValueError(f"XLNetConfig.hidden_size must be even (sinusoids), got "
                       f"{self.hidden_size}")
    layers.check_rates(self, ("dropout_rate",))

  @property
  def compute_dtype(self) -> jnp.dtype:
    return layers.resolve_dtype(self.dtype)

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def memory_length(self) -> int:
    """Memory slots (`mem_len`; -1 and 0: none)."""
    return max(self.mem_len, 0)

  def num_predict(self, length: int) -> int:
    """Target slots of a `length`-token window: ceil(length / K)."""
    return -(-length // self.partial_prediction)


GIN_CONFIGURABLES = (XLNetConfig,)


def get_config(name: str, **overrides) -> XLNetConfig:
  """The XLNetConfig of a named size (`gin_configs/models/<name>.gin`) or a gin path."""
  return t5.config_from_gin(XLNetConfig, name, GIN_DIR / f"{name}.gin", CONFIG_NAMES,
                            **overrides)


# ----------------------------------------------------------------------------- modules

_RESIDUAL = (axes.BATCH, axes.LENGTH, axes.ACT_EMBED)
_HEADS_ACT = (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, axes.ACT_KV)


def _init(cfg: XLNetConfig):
  return nn.initializers.normal(stddev=cfg.initializer_range)


class Visibility(NamedTuple):
  """Which keys each query sees over `[memory; segment]` (True = visible).

  content: `[batch, 1, q, m + q]`, the content stream's.
  query: `[batch, 1, q, m + q]`, the query stream's (None: no query stream).
  """
  content: jnp.ndarray
  query: Optional[jnp.ndarray]


def visibility(segments, mem_segments=None, perm_mask=None) -> Visibility:
  """The two streams' masks from packing segments and the permutation mask.

  Args:
    segments: `[batch, q]` int, 0 = padding (`attention.token_segments`).
    mem_segments: `[batch, m]` int segment of each memory slot (0: empty), or None.
    perm_mask: `[batch, q, q]` bool, True where query i may NOT see key j
      (XLNet's `perm_mask`), or None (everything within a protein visible).
  The content stream always sees its own position (XLNet's `non_tgt_mask`);
  the query stream sees what `perm_mask` allows. A memory slot is visible to
  the queries of the protein it belongs to.
  """
  same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
  if mem_segments is not None:
    mem = (segments[:, :, None] == mem_segments[:, None, :]) & (mem_segments[:, None, :] > 0)
  if perm_mask is None:
    content, query = same, None
  else:
    eye = jnp.eye(segments.shape[1], dtype=bool)[None]
    content = same & (~perm_mask | eye)
    query = same & ~perm_mask
  join = lambda x: None if x is None else (
      x if mem_segments is None else jnp.concatenate([mem, x], axis=-1))[:, None]
  return Visibility(join(content), join(query))


class RelativeAttention(nn.Module):
  """XLNet's two-stream relative attention, one layer (`rel_attn`).

  Returns (content `[batch, q, embed]`, query `[batch, m, embed]` or None).
  """
  config: XLNetConfig

  @nn.compact
  def __call__(self, h, g, mem, r, vis: Visibility, token_types, mem_token_types,
               target_mapping, deterministic: bool):
    """
    Args:
      h: `[batch, q, embed]` content stream. g: `[batch, m, embed]` query stream or None.
      mem: `[batch, mem, embed]` this layer's memory, or None.
      r: `[q + mem + q, embed]` sinusoids of XLNet's relative distances.
      vis: the streams' masks over `[memory; segment]`.
      token_types: `[batch, q]` int or None (no segment term);
        mem_token_types `[batch, mem]` (memory: type 0, as HF).
      target_mapping: `[batch, m, q]` one-hot rows (zero rows pad), with g.
    """
    cfg, dtype = self.config, self.config.compute_dtype
    heads, kv = cfg.num_heads, cfg.head_size
    init = _init(cfg)
    proj = lambda name: layers.DenseGeneral((heads, kv), (axes.EMBED, axes.HEADS, axes.KV),
                                            dtype=dtype, kernel_init=init, name=name)
    cat = h if mem is None else jnp.concatenate([jnp.asarray(mem, h.dtype), h], axis=1)
    q_proj = proj("q")
    k = layers.with_sharding_constraint(proj("k")(cat), _HEADS_ACT)
    v = layers.with_sharding_constraint(proj("v")(cat), _HEADS_ACT)
    r = proj("r")(r)  # [r, heads, kv]
    r_w, r_r = recurrence.RelativeBiases(heads, kv, cfg.initializer_range, name="biases")()
    r_s = layers.param_with_axes("r_s_bias", init, (heads, kv), jnp.float32,
                                 axes=(axes.HEADS, axes.KV))
    seg_embed = layers.param_with_axes("seg_embed", init, (2, heads, kv), jnp.float32,
                                       axes=(axes.TOKEN_TYPES, axes.HEADS, axes.KV))
    if token_types is not None:
      cat_types = token_types if mem is None else jnp.concatenate([mem_token_types,
                                                                   token_types], axis=1)
      differ = token_types[:, :, None] != cat_types[:, None, :]  # [b, q, k]

    def core(q, mask):
      extra = None
      if token_types is not None:
        # [b, q, h, d] . [2, h, d] -> [b, h, q, 2]: the term for "same" and "different".
        e = jnp.einsum("bqhd,shd->bhqs", jnp.asarray(q, jnp.float32) + r_s, seg_embed)
        extra = jnp.where(differ[:, None], e[..., 1:2], e[..., 0:1])
      rng = None if deterministic or cfg.dropout_rate <= 0 else self.make_rng("dropout")
      return recurrence.relative_attention(
          q, k, v, r, r_w, r_r, mask, offset=q.shape[1], scale=kv ** -0.5,
          extra_logits=extra, dropout_rate=cfg.dropout_rate, dropout_rng=rng, dtype=dtype)

    o = layers.DenseGeneral(cfg.hidden_size, (axes.HEADS, axes.KV, axes.EMBED), num_in_axes=2,
                            dtype=dtype, kernel_init=init, name="o")
    norm = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="layer_norm")
    drop = layers.Dropout(cfg.dropout_rate)

    def post(x, vec):
      return layers.with_sharding_constraint(
          norm(x + drop(o(vec), deterministic=deterministic)), _RESIDUAL)

    h_out = post(h, core(layers.with_sharding_constraint(q_proj(h), _HEADS_ACT), vis.content))
    if g is None:
      return h_out, None
    tm = jnp.asarray(target_mapping, jnp.float32)
    # Each target's query at its position (HF's einsum: exact for one-hot
    # rows), the whole stream's attention, then back to the target slots.
    q_g = jnp.einsum("bmhd,bml->blhd", jnp.asarray(q_proj(g), jnp.float32), tm).astype(dtype)
    vec = core(q_g, vis.query)
    vec = jnp.einsum("blhd,bml->bmhd", jnp.asarray(vec, jnp.float32), tm).astype(dtype)
    return h_out, post(g, vec)


class FeedForward(nn.Module):
  """`LN(x + dropout(layer_2(dropout(act(layer_1(x))))))`; `[batch, length, embed]` -> same."""
  config: XLNetConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    dense = lambda n, kernel_axes, name: layers.DenseGeneral(
        n, kernel_axes, dtype=cfg.compute_dtype, kernel_init=_init(cfg), use_bias=True,
        name=name)
    drop = layers.Dropout(cfg.dropout_rate)
    y = bert.activation(cfg.hidden_act)(dense(cfg.intermediate_size, (axes.EMBED, axes.MLP),
                                              "layer_1")(x))
    y = layers.with_sharding_constraint(y, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    y = drop(dense(cfg.hidden_size, (axes.MLP, axes.EMBED), "layer_2")(
        drop(y, deterministic=deterministic)), deterministic=deterministic)
    y = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="layer_norm")(x + y)
    return layers.with_sharding_constraint(y, _RESIDUAL)


class XLNetLayer(nn.Module):
  """Relative attention, then the feed-forward on each stream (same weights)."""
  config: XLNetConfig

  @nn.compact
  def __call__(self, h, g, mem, r, vis, token_types, mem_token_types, target_mapping,
               deterministic: bool):
    h, g = RelativeAttention(self.config, name="rel_attn")(
        h, g, mem, r, vis, token_types, mem_token_types, target_mapping, deterministic)
    ff = FeedForward(self.config, name="ff")
    return ff(h, deterministic), (None if g is None else ff(g, deterministic))


class SegmentOutput(NamedTuple):
  """One segment through the stack.

  content: `[batch, q, embed]` the last layer's content stream (dropout applied).
  query: `[batch, m, embed]` the last layer's query stream, or None.
  layer_inputs: `[batch, layers, q, embed]` each layer's content input (the
    memory's next entries).
  """
  content: jnp.ndarray
  query: Optional[jnp.ndarray]
  layer_inputs: jnp.ndarray


class XLNetEncoder(nn.Module):
  """HF `XLNetModel`: `word_embedding`, `mask_emb`, `layers_{i}` (see the module docstring)."""
  config: XLNetConfig

  def setup(self):
    cfg = self.config
    self.word_embedding = layers.Embed(cfg.vocab_size, cfg.hidden_size, cfg.compute_dtype,
                                       stddev=cfg.initializer_range,
                                       embedding_axes=(axes.VOCAB, axes.EMBED))
    self.mask_emb = layers.param_with_axes("mask_emb", _init(cfg), (cfg.hidden_size,),
                                           jnp.float32, axes=(axes.EMBED,))
    layer_cls = layers.maybe_remat(XLNetLayer, cfg.remat)
    self.layers = [layer_cls(cfg) for _ in range(cfg.num_layers)]  # layers_{i}
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def segment(self, tokens, segments, memory: Optional[recurrence.Memory] = None, *,
              perm_mask=None, target_mapping=None, token_types=None,
              deterministic=True) -> SegmentOutput:
    """One segment with (optionally) a memory and the query stream.

    Args:
      tokens: `[batch, q]` ids. segments: `[batch, q]` int (0 = padding).
      memory: `recurrence.Memory` of `[batch, layers, m, embed]` (a slot is
        seen by the queries of its segment id), or None.
      perm_mask: `[batch, q, q]` bool (True = may not see), or None.
      target_mapping: `[batch, m_t, q]` float one-hot rows: runs the query stream.
      token_types: `[batch, q]` int (XLNet's segment term), or None.
    """
    cfg = self.config
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    q_len = tokens.shape[1]
    m_len = 0 if memory is None else memory.mem_len
    vis = visibility(segments, None if memory is None else memory.segments, perm_mask)
    h = self.dropout(self.word_embedding(tokens), deterministic=deterministic)
    h = layers.with_sharding_constraint(h, _RESIDUAL)
    g = None
    if target_mapping is not None:
      g = jnp.broadcast_to(jnp.asarray(self.mask_emb, cfg.compute_dtype),
                           target_mapping.shape[:2] + (cfg.hidden_size,))
      g = self.dropout(g, deterministic=deterministic)
    pos = recurrence.sinusoid_embedding(recurrence.xlnet_positions(m_len + q_len, q_len),
                                        cfg.hidden_size, cfg.clamp_len)
    pos = self.dropout(pos.astype(cfg.compute_dtype), deterministic=deterministic)
    mem_types = None
    if token_types is not None:
      token_types = jnp.asarray(token_types, jnp.int32)
      mem_types = jnp.zeros((tokens.shape[0], m_len), jnp.int32)
    inputs = []
    for i, layer in enumerate(self.layers):
      inputs.append(h)
      mem = None if memory is None else memory.layer(i)
      h, g = layer(h, g, mem, pos, vis, token_types, mem_types, target_mapping, deterministic)
    # HF drops out the stream it returns (the query stream when there is one).
    if g is None:
      h = self.dropout(h, deterministic=deterministic)
    else:
      g = self.dropout(g, deterministic=deterministic)
    return SegmentOutput(h, g, jnp.stack(inputs, axis=1))

  def empty_memory(self, batch: int) -> recurrence.Memory:
    cfg = self.config
    return recurrence.Memory.zeros(batch, cfg.num_layers, cfg.memory_length, cfg.hidden_size,
                                   cfg.compute_dtype)

  def encode(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """Last layer's content stream `[batch, length, embed]`, segment by segment.

    Up to `target_length` tokens: one segment, no memory. Longer: segments of
    `target_length`, each with the memory of the `mem_len` positions before
    it (per layer, in the same protein). `positions` is accepted for the
    shared encoder signature and unused: XLNet's positions are relative.
    """
    del positions
    cfg = self.config
    segments = attn_lib.token_segments(tokens, segment_ids)
    length, seg_len = tokens.shape[1], cfg.target_length
    if length <= seg_len:
      return self.segment(tokens, segments, deterministic=deterministic).content
    # Padded to whole segments (padding is segment 0: seen by nothing), then
    # one scan over them: one compiled segment whatever the protein's length.
    n = -(-length // seg_len)
    pad = [(0, 0), (0, n * seg_len - length)]
    chunks = lambda x: jnp.moveaxis(jnp.pad(x, pad).reshape(x.shape[0], n, seg_len), 1, 0)

    def step(module, memory, xs):
      tokens_c, segments_c = xs  # [b, seg_len] each
      out = module.segment(tokens_c, segments_c, memory, deterministic=deterministic)
      return recurrence.update_memory(memory, out.layer_inputs, segments_c), out.content

    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False,
                                                                  "dropout": True})
    _, outs = scan(self, self.empty_memory(tokens.shape[0]), (chunks(tokens), chunks(segments)))
    # [n, b, seg_len, d] -> [b, length, d]
    return jnp.moveaxis(outs, 0, 1).reshape(tokens.shape[0], n * seg_len, -1)[:, :length]

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """`[batch, length]` int (0 = padding) -> `[batch, length, hidden]` (compute dtype)."""
    return self.encode(tokens, segment_ids, positions, deterministic=deterministic)


class XLNetLMHeadModel(XLNetEncoder):
  """HF `XLNetLMHeadModel`: the encoder and the tied output layer with its bias (`lm_loss`)."""

  def setup(self):
    super().setup()
    self.lm_loss = LmBias(self.config.vocab_size)

  def logits(self, hidden):
    """`[..., embed]` -> float32 `[..., vocab]`: tied to the word embedding, plus the bias."""
    logits = self.word_embedding.attend(hidden) + self.lm_loss()
    return layers.with_sharding_constraint(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))

  def __call__(self, tokens, segment_ids=None, *, perm_mask=None, target_mapping=None,
               memory=None, token_types=None, deterministic=True):
    """Logits of one segment: float32 `[batch, m, vocab]` at the targets when
    `target_mapping` is given (the query stream), else `[batch, q, vocab]`
    (the content stream); and the `SegmentOutput`."""
    segments = attn_lib.token_segments(tokens, segment_ids)
    out = self.segment(tokens, segments, memory, perm_mask=perm_mask,
                       target_mapping=target_mapping, token_types=token_types,
                       deterministic=deterministic)
    return self.logits(out.content if out.query is None else out.query), out


class LmBias(nn.Module):
  """The output layer's bias `[vocab]` (HF `lm_loss.bias`; its weight is the word embedding)."""
  vocab_size: int

  @nn.compact
  def __call__(self):
    return layers.param_with_axes("bias", nn.initializers.zeros, (self.vocab_size,),
                                  jnp.float32, axes=(axes.VOCAB,))


def encoder_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Every subtree but `lm_loss` (XLNetModel's), from any tree holding them."""
  if "word_embedding" not in params or "layers_0" not in params:
    raise InputError("params have no word_embedding / layers_0 subtree (not a ProtXLNet tree?)")
  return {k: v for k, v in params.items() if k != "lm_loss"}


# ----------------------------------------------------------------------------- counting

def param_count(config: XLNetConfig) -> tuple[int, int]:
  """(total with `lm_loss`, encoder) parameter counts, from abstract shapes."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(lambda rng, t: XLNetLMHeadModel(config).init(rng, t)["params"],
                          jax.random.PRNGKey(0), tokens)
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  return size(params), size(encoder_params(params))


def encoder_flops(config: XLNetConfig, length: int) -> float:
  """Forward FLOPs of the content stream for one segment of `length` tokens, no memory.

  Matmuls only, 2 per multiply-add: q, k, v, o (`4 d^2` a token), the
  relative encodings' projection (`2 * length` rows of `d^2` a segment:
  `2 d^2` a token), the feed-forward (`2 d d_inner`), and the scores and
  values (content `length`, position `2 * length` columns, values `length`:
  `4 * length * d` a token). Embedding gathers, norms and biases not counted.
  """
  c = config
  d = c.hidden_size
  per_token = 2 * (6 * d * d + 2 * d * c.intermediate_size) + 2 * 4 * length * d
  return float(length * c.num_layers * per_token)


def flops_per_token(config: XLNetConfig, length: int) -> float:
  """Training FLOPs per input position (3x forward): the content stream
  (`encoder_flops`) and the query stream: its projections and feed-forward at
  the `length / K` targets and its attention at every position (it is
  evaluated there, as HF), and the tied head at the targets."""
  c = config
  d = c.hidden_size
  share = c.num_predict(length) / length
  query_dense = 2 * (2 * d * d + 2 * d * c.intermediate_size) * share
  query_attention = 2 * 4 * length * d
  head = 2 * d * c.vocab_size * share
  return 3.0 * (encoder_flops(c, length) / length + c.num_layers * (query_dense + query_attention)
                + head)


# ----------------------------------------------------------------------------- objective

class PermutationTargets(NamedTuple):
  """One batch's permutation-LM draw (see the module docstring).

  perm_mask: `[batch, length, length]` bool, True where i may not see j.
  target_mapping: `[batch, num_predict, length]` float32 one-hot rows (zero rows pad).
  target_positions: `[batch, num_predict]` int32 position of each target slot.
  target_ids: `[batch, num_predict]` int32 the token to predict (0 in padding slots).
  target_weights: `[batch, num_predict]` float32, 1 at real targets.
  order: `[batch, length]` int32 each position's place in the factorisation
    order as the masks use it: -1 for context residues (before everything),
    the drawn rank for targets and functional tokens, -2 for padding.
  """
  perm_mask: jnp.ndarray
  target_mapping: jnp.ndarray
  target_positions: jnp.ndarray
  target_ids: jnp.ndarray
  target_weights: jnp.ndarray
  order: jnp.ndarray


def permutation_targets(rng: jax.Array, tokens, segments, *, partial_prediction: int = 6,
                        num_predict: Optional[int] = None,
                        functional_ids: Sequence[int] = FUNCTIONAL_IDS) -> PermutationTargets:
  """XLNet's `_local_perm` for `[batch, length]` ids, drawn from `rng`.

  Args:
    rng: the key (the step's: the same (seed, step) gives the same draw).
    tokens: `[batch, length]` ids. segments: `[batch, length]` int (0 = padding;
      packed proteins have their own ids and their own 1/K).
    partial_prediction: K.
    num_predict: target slots (default ceil(length / K)); targets beyond it
      (packed rows only) stay hidden from the others but have no loss, as XLNet.
    functional_ids: ids never predicted ([SEP], [CLS]).
  """
  b, length = tokens.shape
  num_predict = num_predict or -(-length // partial_prediction)
  real = segments > 0
  functional = real & jnp.isin(tokens, jnp.asarray(functional_ids, tokens.dtype))
  residue = real & ~functional
  # A uniformly random order of each row (padding last): rank[i] = place of i.
  u = jax.random.uniform(rng, (b, length))
  rank = jnp.argsort(jnp.argsort(jnp.where(real, u, 2.0), axis=-1), axis=-1).astype(jnp.int32)
  same = segments[:, :, None] == segments[:, None, :]
  # Each residue's place among its protein's residues, and their number.
  before = same & residue[:, None, :] & (rank[:, None, :] < rank[:, :, None])
  place = jnp.sum(before, axis=-1)
  count = jnp.sum(same & residue[:, None, :], axis=-1)
  target = residue & (place >= count - (-(-count // partial_prediction)))
  context = residue & ~target
  order = jnp.where(context, -1, jnp.where(real, rank, -2))
  # _local_perm: i may not see j when j is a target or functional token not
  # before i; a target never sees itself (`self_rev_index`).
  self_order = jnp.where(target, order, order + 1)
  perm_mask = (self_order[:, :, None] <= order[:, None, :]) & ~context[:, None, :]
  # Target slots in position order.
  key = jnp.where(target, 0, length) + jnp.arange(length)[None]
  positions = jnp.argsort(key, axis=-1)[:, :num_predict].astype(jnp.int32)
  weights = jnp.take_along_axis(target, positions, axis=-1)
  mapping = jax.nn.one_hot(positions, length, dtype=jnp.float32) * weights[..., None]
  ids = jnp.where(weights, jnp.take_along_axis(tokens, positions, axis=-1), 0)
  return PermutationTargets(perm_mask, mapping, positions, ids.astype(jnp.int32),
                            weights.astype(jnp.float32), order)


def step_keys(rng: Optional[jax.Array], batch: Mapping[str, Any]):
  """(permutation key, dropout key or None) of one step.

  With the trainer's rng (`fold_in(state.rng, step)`): both folded from it.
  Without (evaluation, `train.dropout=False`): no dropout, and the
  permutation from a fixed key folded with the batch's fingerprint, so the
  loss stays a pure function of (params, batch).
  """
  if rng is None:
    key = jax.random.PRNGKey(electra.SAMPLING_SEED)
    return jax.random.fold_in(key, electra.batch_fingerprint(batch["encoder_input_tokens"])), None
  return jax.random.fold_in(rng, _PURPOSE_PERMUTATION), jax.random.fold_in(rng, _PURPOSE_DROPOUT)


def _length(batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
  return bert._length(batch_shapes)  # pylint: disable=protected-access


class PermutationLMModel:
  """t5x-style Model for permutation language modelling (the trainer's `Model` protocol).

  Attributes:
    config: the XLNetConfig.
    module: the `XLNetLMHeadModel` linen module.
    family: "protxlnet".
  """

  def __init__(self, config: XLNetConfig):
    self.config = config
    self.module = XLNetLMHeadModel(config)
    self.family = "protxlnet"

  def init_variables(self, rng, batch_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """`{'params': ..., 'params_axes': ...}`; works under `jax.eval_shape`."""
    tokens = jnp.ones((1, min(_length(batch_shapes), self.config.target_length)), jnp.int32)
    variables = self.module.init({"params": rng}, tokens, deterministic=True)
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  def targets(self, batch, rng) -> PermutationTargets:
    tokens = batch["encoder_input_tokens"]
    segments = attn_lib.token_segments(tokens, batch.get("encoder_segment_ids"))
    return permutation_targets(rng, tokens, segments,
                               partial_prediction=self.config.partial_prediction)

  def forward(self, params, batch, dropout_rng=None):
    """(query-stream logits `[batch, num_predict, vocab]` float32, the targets)."""
    tokens = batch["encoder_input_tokens"]
    if tokens.shape[1] > self.config.target_length:
      raise InputError(f"training windows of {tokens.shape[1]} tokens exceed the model's "
                       f"target_length {self.config.target_length}")
    permutation_rng, drop_rng = step_keys(dropout_rng, batch)
    t = self.targets(batch, permutation_rng)
    logits, _ = self.module.apply(
        {"params": params}, tokens, batch.get("encoder_segment_ids"), perm_mask=t.perm_mask,
        target_mapping=t.target_mapping, deterministic=drop_rng is None,
        rngs=None if drop_rng is None else {"dropout": drop_rng})
    return logits, t

  def loss_fn(self, params, batch, dropout_rng):
    """(loss, metrics); `dropout_rng=None` means no dropout (permutation still seeded)."""
    logits, t = self.forward(params, batch, dropout_rng)
    return bert._loss_and_metrics(  # pylint: disable=protected-access
        logits, {"encoder_target_tokens": t.target_ids, "encoder_loss_weights": t.target_weights})

  def scored_positions(self, batch) -> tuple[np.ndarray, np.ndarray]:
    """(bool `[batch, length]` where the evaluation loss (no rng) predicts, the
    tokens there): what reports score a masked-residue accuracy on."""
    permutation_rng, _ = step_keys(None, batch)
    t = self.targets({k: jnp.asarray(v) for k, v in batch.items()}, permutation_rng)
    where = jnp.sum(t.target_mapping, axis=1) > 0
    return np.asarray(where), np.asarray(batch["encoder_input_tokens"])

  def flops_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> float:
    length = _length(batch_shapes)
    return flops_per_token(self.config, length) * length

  def tokens_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
    return _length(batch_shapes)
