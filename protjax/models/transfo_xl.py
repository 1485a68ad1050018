"""ProtTXL: Transformer-XL (Dai et al., 2019) with segment-level recurrence, in Flax linen.

The layout is the original's as Hugging Face 4.x `TransfoXLModel` holds it
with `adaptive=False, cutoffs=[], div_val=1, pre_lnorm=False, attn_type=0`
(the vocabulary has 30 tokens, so no adaptive softmax): a token embedding
scaled by sqrt(hidden), dropout, then post-LayerNorm layers of relative
multi-head attention over `[memory; current segment]` (causal; sinusoidal
relative positions projected per layer, learned global biases u and v per
layer (`untie_r`) or shared by the stack) and a ReLU feed-forward with
biases, each followed by dropout, the residual add and LayerNorm; dropout on
the last layer's output. The LM head is the embedding, tied, plus an output
bias (the original's single-cluster softmax). The shared pieces (relative
attention core, positions, memory) are `protjax.models.recurrence`.

Memory: the input of every layer for the last `mem_len` positions, without
gradient (`recurrence.Memory`, `[batch, layers, mem_len, hidden]`). In
training it is the trainer's recurrent `model_state`: each batch row is a
stream that continues where the previous step's row stopped
(`protjax.data.stream`), so a step's memory is that row's previous segment.

Parameter tree (`variables["params"]`, every parameter `param_with_axes`):

  transformer/word_embeddings/embedding                  [vocab, embed]
  transformer/layers_{i}/attention/{query,key,value}/kernel   [embed, heads, kv]
  transformer/layers_{i}/attention/position/kernel       [embed, heads, kv]  (r_net)
  transformer/layers_{i}/attention/out/kernel            [heads, kv, embed]  (o_net)
  transformer/layers_{i}/attention/biases/{r_w_bias,r_r_bias}  [heads, kv]  (untie_r)
  transformer/biases/{r_w_bias,r_r_bias}                 [heads, kv]  (not untie_r)
  transformer/layers_{i}/attention_layer_norm/{scale,bias}    [embed]
  transformer/layers_{i}/wi/{kernel,bias}                [embed, mlp], [mlp]
  transformer/layers_{i}/wo/{kernel,bias}                [mlp, embed], [embed]
  transformer/layers_{i}/mlp_layer_norm/{scale,bias}     [embed]
  output_bias                                            [vocab]  (LM head only)

`TransfoXLEncoder` (what `protjax-embed` runs) holds `transformer` alone and
reads a protein of any length segment by segment in order, with the memory
(a scan: activation memory bounded by segment and memory length, not by the
protein). A residue sees only its left context: the residues before it in
the protein, as far back as the memory reaches (`mem_len` positions before
its segment), and the tokens framing it on the left.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protjax import axes
from protjax.errors import InputError
from protjax.models import attention as attn_lib
from protjax.models import bert
from protjax.models import layers
from protjax.models import recurrence
from protjax.models import t5

GIN_DIR = t5.GIN_DIR
CONFIG_NAMES = ("prottxl_tiny", "prottxl_small", "prottxl_mini_wide", "prottxl_paper",
                "prottxl_bfd")


@dataclasses.dataclass(frozen=True)
class TransfoXLConfig:
  """Architecture of one ProtTXL size (every default declared here, once).

  Attributes:
    vocab_size: token ids (the ProtBert vocabulary: 30).
    hidden_size: d_model, also the embedding width (`embed`).
    num_layers: n_layer.
    num_heads: n_head.
    head_size: d_head (independent of hidden / heads, as the original: the
      paper's ProtTXL-BFD has 14 heads of 128).
    intermediate_size: d_inner of the feed-forward (`mlp`).
    segment_length: tgt_len: the positions of one segment (one training
      step's row; the embedding reads proteins in segments of this length).
    mem_len: positions of memory per layer.
    clamp_len: relative distances above it use its encoding (-1: none).
    untie_r: u and v per layer (True, HF's default) or one pair for the stack.
    dropout_rate: dropout on embeddings, relative encodings, sub-layer
      outputs, feed-forward hidden and the last output (Table 2: 0.15).
    attention_dropout_rate: dropatt, on the attention probabilities.
    layer_norm_epsilon: LayerNorm epsilon (1e-5).
    initializer_range: std of the normal initialisation of every weight.
    dtype: compute dtype, "float32" | "bfloat16" | "float16" | "auto".
    attention_impl: accepted for the family-neutral embed path ("einsum" |
      "xla" | "blockwise"); the relative core has one implementation, whose
      memory is bounded by segment_length x (segment_length + mem_len).
    remat: rematerialise each layer in the backward pass.
  """
  vocab_size: int = 30
  hidden_size: int = 1024
  num_layers: int = 30
  num_heads: int = 16
  head_size: int = 64
  intermediate_size: int = 4096
  segment_length: int = 512
  mem_len: int = 512
  clamp_len: int = -1
  untie_r: bool = True
  dropout_rate: float = 0.15
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-5
  initializer_range: float = 0.02
  dtype: str = "float32"
  attention_impl: str = "einsum"
  remat: bool = False

  def __post_init__(self):
    layers.check_compute_options(self.dtype, self.attention_impl, attn_lib.IMPLEMENTATIONS)
    layers.check_positive_ints(self, (
        "vocab_size", "hidden_size", "num_layers", "num_heads", "head_size",
        "intermediate_size", "segment_length"))
    if isinstance(self.mem_len, bool) or not isinstance(self.mem_len, int) or self.mem_len < 0:
      raise ValueError(f"TransfoXLConfig.mem_len must be an integer >= 0, got {self.mem_len!r}")
    if self.hidden_size % 2:
      raise ValueError(f"TransfoXLConfig.hidden_size must be even (sinusoids), got "
                       f"{self.hidden_size}")
    layers.check_rates(self, ("dropout_rate", "attention_dropout_rate"))

  @property
  def compute_dtype(self) -> jnp.dtype:
    return layers.resolve_dtype(self.dtype)


GIN_CONFIGURABLES = (TransfoXLConfig,)


def get_config(name: str, **overrides) -> TransfoXLConfig:
  """The config of a named size (`gin_configs/models/<name>.gin`, e.g. "prottxl_tiny") or a gin path."""
  return t5.config_from_gin(TransfoXLConfig, name, GIN_DIR / f"{name}.gin", CONFIG_NAMES,
                            **overrides)


# ----------------------------------------------------------------------------- modules

_RESIDUAL = (axes.BATCH, axes.LENGTH, axes.ACT_EMBED)
_HEADS_ACT = (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, axes.ACT_KV)


def _init(cfg: TransfoXLConfig):
  return nn.initializers.normal(stddev=cfg.initializer_range)


def _dense(cfg, features, kernel_axes, name, num_in_axes=1, use_bias=False):
  return layers.DenseGeneral(features, kernel_axes=kernel_axes, num_in_axes=num_in_axes,
                             dtype=cfg.compute_dtype, kernel_init=_init(cfg),
                             use_bias=use_bias, name=name)


class RelativeSelfAttention(nn.Module):
  """TXL's RelPartialLearnableMultiHeadAttn without its norm: `[b, q, e]` -> `[b, q, e]`."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, x, mem, pos_emb, mask, shared_biases, deterministic: bool):
    """x `[b, q, e]`, mem `[b, m, e]`, pos_emb `[m + q, e]`, mask `[b, 1, q, m + q]`."""
    cfg = self.config
    heads = (cfg.num_heads, cfg.head_size)
    qkv_axes = (axes.EMBED, axes.HEADS, axes.KV)
    cat = jnp.concatenate([mem.astype(x.dtype), x], axis=1)  # [b, m + q, e]
    q = layers.with_sharding_constraint(_dense(cfg, heads, qkv_axes, "query")(x), _HEADS_ACT)
    k = layers.with_sharding_constraint(_dense(cfg, heads, qkv_axes, "key")(cat), _HEADS_ACT)
    v = layers.with_sharding_constraint(_dense(cfg, heads, qkv_axes, "value")(cat), _HEADS_ACT)
    r = _dense(cfg, heads, qkv_axes, "position")(pos_emb)  # [m + q, h, d]
    if shared_biases is None:
      r_w, r_r = recurrence.RelativeBiases(cfg.num_heads, cfg.head_size, cfg.initializer_range,
                                           name="biases")()
    else:
      r_w, r_r = shared_biases
    rng = None
    if not deterministic and cfg.attention_dropout_rate > 0.0:
      rng = self.make_rng("dropout")
    out = recurrence.relative_attention(
        q, k, v, r, r_w, r_r, mask, offset=x.shape[1] - 1, scale=cfg.head_size ** -0.5,
        dropout_rate=cfg.attention_dropout_rate, dropout_rng=rng, dtype=cfg.compute_dtype)
    out = layers.with_sharding_constraint(out, _HEADS_ACT)
    return _dense(cfg, cfg.hidden_size, (axes.HEADS, axes.KV, axes.EMBED), "out", num_in_axes=2)(out)


class TransfoXLLayer(nn.Module):
  """Post-LN: LN(x + drop(attn(x))), then LN(x + drop(wo(drop(relu(wi(x))))))."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, x, mem, pos_emb, mask, shared_biases, deterministic: bool):
    cfg, dtype = self.config, self.config.compute_dtype
    drop = layers.Dropout(rate=cfg.dropout_rate)
    h = RelativeSelfAttention(cfg, name="attention")(x, mem, pos_emb, mask, shared_biases,
                                                     deterministic)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="attention_layer_norm")(
        x + drop(h, deterministic=deterministic))
    x = layers.with_sharding_constraint(x, _RESIDUAL)
    h = _dense(cfg, cfg.intermediate_size, (axes.EMBED, axes.MLP), "wi", use_bias=True)(x)
    h = layers.with_sharding_constraint(nn.relu(h), (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    h = drop(h, deterministic=deterministic)
    h = _dense(cfg, cfg.hidden_size, (axes.MLP, axes.EMBED), "wo", use_bias=True)(h)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="mlp_layer_norm")(
        x + drop(h, deterministic=deterministic))
    return layers.with_sharding_constraint(x, _RESIDUAL)


class TransfoXL(nn.Module):
  """The stack on one segment: `(memory, tokens, segments) -> (new memory, hidden)`."""
  config: TransfoXLConfig
  deterministic: bool = True

  def setup(self):
    cfg = self.config
    self.word_embeddings = layers.Embed(cfg.vocab_size, cfg.hidden_size, cfg.compute_dtype,
                                        stddev=cfg.initializer_range,
                                        embedding_axes=(axes.VOCAB, axes.EMBED))
    layer_cls = layers.maybe_remat(TransfoXLLayer, cfg.remat)
    self.layers = [layer_cls(cfg) for _ in range(cfg.num_layers)]  # layers_{i}
    self.biases = (None if cfg.untie_r else recurrence.RelativeBiases(
        cfg.num_heads, cfg.head_size, cfg.initializer_range))
    self.dropout = layers.Dropout(rate=cfg.dropout_rate)

  def __call__(self, memory: recurrence.Memory, tokens: jnp.ndarray, segments: jnp.ndarray
               ) -> tuple[recurrence.Memory, jnp.ndarray]:
    """One segment.

    Args:
      memory: `recurrence.Memory` with `[batch, layers, mem_len, hidden]` states.
      tokens: `[batch, q]` int ids.
      segments: `[batch, q]` int32 protein segment ids (0 = padding).
    Returns:
      (the memory after this segment, last hidden state `[batch, q, hidden]`).
    """
    cfg, det = self.config, self.deterministic
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    q, m = tokens.shape[1], memory.mem_len
    x = self.word_embeddings(tokens) * jnp.asarray(cfg.hidden_size ** 0.5, cfg.compute_dtype)
    x = layers.with_sharding_constraint(self.dropout(x, deterministic=det), _RESIDUAL)
    pos = recurrence.sinusoid_embedding(recurrence.txl_positions(m + q), cfg.hidden_size,
                                        cfg.clamp_len)
    pos = self.dropout(pos.astype(cfg.compute_dtype), deterministic=det)  # [m + q, e]
    mask = recurrence.causal_mask(memory.segments, segments)
    shared = None if self.biases is None else self.biases()
    inputs = []
    for i, layer in enumerate(self.layers):
      inputs.append(x)
      x = layer(x, memory.layer(i), pos, mask, shared, det)
    x = self.dropout(x, deterministic=det)
    new_memory = recurrence.update_memory(memory, jnp.stack(inputs, axis=1), segments)
    return new_memory, x

  def attend(self, x):
    """Tied output embedding: `[..., hidden]` -> float32 `[..., vocab]` (no bias)."""
    return self.word_embeddings.attend(x)


def empty_memory(cfg: TransfoXLConfig, batch: int) -> recurrence.Memory:
  """A memory with nothing in it, `[batch, layers, mem_len, hidden]` in the compute dtype."""
  return recurrence.Memory.zeros(batch, cfg.num_layers, cfg.mem_len, cfg.hidden_size,
                                 cfg.compute_dtype)


class TransfoXLLMHeadModel(nn.Module):
  """One segment with memory -> next-token logits. Params: `transformer`, `output_bias`."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, tokens, memory: Optional[recurrence.Memory] = None, segments=None, *,
               deterministic: bool = True):
    """`[batch, q]` ids -> (float32 logits `[batch, q, vocab]`, new memory, hidden).

    `memory` None: an empty one. `segments` None: 1 where tokens > 0.
    """
    cfg = self.config
    if memory is None:
      memory = empty_memory(cfg, tokens.shape[0])
    segments = attn_lib.token_segments(tokens, segments)
    stack = TransfoXL(cfg, deterministic=deterministic, name="transformer")
    memory, hidden = stack(memory, tokens, segments)
    bias = layers.param_with_axes("output_bias", nn.initializers.zeros, (cfg.vocab_size,),
                                  jnp.float32, axes=(axes.VOCAB,))
    logits = stack.attend(hidden) + jnp.asarray(bias, jnp.float32)
    logits = layers.with_sharding_constraint(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))
    return logits, memory, hidden


class TransfoXLEncoder(nn.Module):
  """Per-residue states of whole proteins: segments in order, with the memory.

  Holds exactly the `transformer` subtree. The row is cut into
  `segment_length` pieces (the last one padded), scanned in order carrying
  the memory: activations are bounded by segment and memory length whatever
  the protein's length.
  """
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """`[batch, length]` ids (0 = padding) -> `[batch, length, hidden]` (compute dtype).

    `segment_ids` keep packed proteins apart (each sees only its own
    tokens); `positions` are not needed (distances are by index).
    """
    del positions
    cfg = self.config
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    b, length = tokens.shape
    seg_len = cfg.segment_length
    n = -(-length // seg_len)
    segments = attn_lib.token_segments(tokens, segment_ids)
    pad = n * seg_len - length
    # [b, n * s] -> [n, b, s]: the scan's leading axis.
    split = lambda x: jnp.moveaxis(jnp.pad(x, ((0, 0), (0, pad))).reshape(b, n, seg_len), 1, 0)
    scan = nn.scan(TransfoXL, variable_broadcast=("params", "params_axes"),
                   split_rngs={"params": False, "dropout": True}, in_axes=0, out_axes=0,
                   length=n)
    _, hidden = scan(cfg, deterministic=deterministic, name="transformer")(
        empty_memory(cfg, b), split(tokens), split(segments))  # [n, b, s, e]
    hidden = jnp.moveaxis(hidden, 0, 1).reshape(b, n * seg_len, cfg.hidden_size)
    return layers.with_sharding_constraint(hidden[:, :length], _RESIDUAL)


def encoder_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The `transformer` subtree of full params (for TransfoXLEncoder)."""
  if "transformer" not in params:
    raise InputError("params have no transformer subtree (not a ProtTXL tree?)")
  return {"transformer": params["transformer"]}


# ----------------------------------------------------------------------------- counting

def param_count(config: TransfoXLConfig) -> tuple[int, int]:
  """(total with the output bias, encoder) parameter counts, from abstract shapes."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(lambda rng, t: TransfoXLLMHeadModel(config).init(rng, t)["params"],
                          jax.random.PRNGKey(0), tokens)
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  return size(params), size(encoder_params(params))


def flops_per_token(config: TransfoXLConfig, length: int) -> float:
  """Training FLOPs per position of a `length`-token segment (3x forward), matmuls only.

  Per layer and token: q/k/v/out projections (k and v over memory too: the
  memory's keys are recomputed each segment, as the original), the position
  projection of the `mem_len + length` encodings shared by the segment, the
  content and position scores and the weighted sum over `mem_len + length`
  keys, the feed-forward; plus the tied output layer.
  """
  c = config
  klen = c.mem_len + length
  inner = c.num_heads * c.head_size
  proj = 2 * c.hidden_size * inner * (2 + 2 * klen / length)  # q, out; k, v over klen
  pos = 2 * c.hidden_size * inner * klen / length
  scores = 3 * 2 * klen * inner
  ff = 2 * 2 * c.hidden_size * c.intermediate_size
  head = 2 * c.hidden_size * c.vocab_size
  return 3.0 * (c.num_layers * (proj + pos + scores + ff) + head)


# ----------------------------------------------------------------------------- Model wrapper

def _length(batch_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
  try:
    shape = batch_shapes["decoder_input_tokens"]
  except KeyError:
    raise InputError("a Transformer-XL model needs feature 'decoder_input_tokens'; the batch "
                     f"has {sorted(batch_shapes)}") from None
  return int(shape[0]), int(shape[1])


def _loss_and_metrics(logits, batch):
  """Next-token cross-entropy and scalar metrics (`bert.token_loss_and_metrics`).

  `batch["decoder_target_tokens"]` holds token t+1 at position t;
  `decoder_loss_weights` is 1 where it is a real token (everywhere in a
  stream). `masked_residue_accuracy` (the name every family's console line
  and the acid test read) is the accuracy at those positions.
  """
  return bert.token_loss_and_metrics(logits, batch["decoder_target_tokens"],
                                     batch["decoder_loss_weights"])


class TransfoXLModel:
  """t5x-style Model for ProtTXL's next-token objective, with a recurrent state.

  The trainer keeps the memory in `TrainState.model_state` (see
  `protjax.models.recurrence`): `init_model_state` is an empty memory for the
  global batch, `loss_fn(..., model_state=m)` returns the memory after the
  step's segment beside the metrics.
  """

  def __init__(self, config: TransfoXLConfig):
    self.config = config
    self.module = TransfoXLLMHeadModel(config)
    self.family = "prottxl"

  def init_variables(self, rng, batch_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """`{'params': ..., 'params_axes': ...}`; works under `jax.eval_shape`."""
    tokens = jnp.ones((1, _length(batch_shapes)[1]), jnp.int32)
    variables = self.module.init({"params": rng}, tokens, deterministic=True)
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  def init_model_state(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> recurrence.Memory:
    """An empty memory for the global batch."""
    return empty_memory(self.config, _length(batch_shapes)[0])

  def model_state_axes(self) -> recurrence.Memory:
    """Logical axis names of the state's leaves (PartitionSpecs of names)."""
    spec = jax.sharding.PartitionSpec
    return recurrence.Memory(spec(*recurrence.MEMORY_AXES), spec(*recurrence.MEMORY_SEGMENT_AXES))

  def apply(self, params, batch, dropout_rng=None, memory=None):
    """(logits `[batch, q, vocab]` float32, new memory) for a "decoder" feature batch."""
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    logits, memory, _ = self.module.apply(
        {"params": params}, batch["decoder_input_tokens"], memory,
        batch.get("decoder_segment_ids"), deterministic=dropout_rng is None, rngs=rngs)
    return logits, memory

  def loss_fn(self, params, batch, dropout_rng, model_state=None):
    """(loss, metrics), or with `model_state` (the memory) (loss, (metrics, new memory)).

    Without a state (evaluation, probes) each batch starts from an empty memory.
    """
    logits, memory = self.apply(params, batch, dropout_rng, model_state)
    loss, metrics = _loss_and_metrics(logits, batch)
    if model_state is None:
      return loss, metrics
    return loss, (metrics, memory)

  def scored_positions(self, batch) -> tuple[np.ndarray, np.ndarray]:
    """Where the loss predicts (every next token of the stream) and the targets there
    (the acid test's held-out accuracy)."""
    return np.asarray(batch["decoder_loss_weights"]) > 0, np.asarray(batch["decoder_target_tokens"])

  def flops_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> float:
    length = _length(batch_shapes)[1]
    return flops_per_token(self.config, length) * length

  def tokens_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
    return _length(batch_shapes)[1]
