"""ProtBert and ProtAlbert: BERT and ALBERT encoders with the MLM head, in Flax linen.

One module serves both, configured by `BertConfig`: ALBERT is BERT with a
factorised token embedding (`embedding_size`, projected to the hidden size)
and one set of layer weights used by every layer (`share_layers`). The layout
is Hugging Face's `BertForMaskedLM` / `AlbertForMaskedLM`, so weights map one
to one (`protjax.hf.bert`): word + learned absolute position + token-type
embeddings (token type always 0: one protein per example), LayerNorm, then
post-LayerNorm blocks (biased attention with 1/sqrt(head size) logit scaling,
output dense + residual + LayerNorm; dense + GELU, dense + residual +
LayerNorm), and the MLM head (dense to the embedding width, GELU, LayerNorm,
decoder tied to the word embeddings plus an output bias). No pooler
(`BertForMaskedLM` has none). Dropout (Table 2: 0.0) after the embeddings,
on the attention weights and after both sub-layers' output dense, as HF.

Parameter tree (`variables["params"]`; every parameter made with
`param_with_axes`). E is the embedding width: `embedding_size` for ALBERT,
the hidden size for BERT; L is `layers_{i}` (BERT, one per layer) or
`shared_layer` (ALBERT, one for all):

  embeddings/word_embeddings/embedding           [vocab, token_embed]   [30, E]
  embeddings/position_embeddings/embedding       [abspos, token_embed]  [40000, E]
  embeddings/token_type_embeddings/embedding     [token_types, token_embed]  [2, E]
  embeddings/layer_norm/{scale,bias}             [token_embed]
  embeddings/projection/kernel                   [token_embed, embed]   (ALBERT only)
  embeddings/projection/bias                     [embed]                (ALBERT only)
  encoder/L/attention/{query,key,value}/kernel   [embed, heads, kv]
  encoder/L/attention/{query,key,value}/bias     [heads, kv]
  encoder/L/attention/out/kernel                 [heads, kv, embed]
  encoder/L/attention/out/bias                   [embed]
  encoder/L/attention_layer_norm/{scale,bias}    [embed]
  encoder/L/mlp/wi/kernel, bias                  [embed, mlp], [mlp]
  encoder/L/mlp/wo/kernel, bias                  [mlp, embed], [embed]
  encoder/L/mlp_layer_norm/{scale,bias}          [embed]
  mlm_head/dense/kernel, bias                    [embed, token_embed], [token_embed]
  mlm_head/layer_norm/{scale,bias}               [token_embed]
  mlm_head/output_bias                           [vocab]

(the decoder is `embeddings/word_embeddings/embedding`, transposed). The
embedding width has its own logical name `token_embed` (not `embed`) so the
projection and the MLM dense never name one axis twice. `BertEncoder` has
exactly the `embeddings` and `encoder` subtrees.

Packing: segment ids (0 = padding) restrict attention to the same protein,
and positions (restarting at 0 per protein) index the position table, so a
packed row computes exactly what each protein alone would. Blockwise
attention evaluates the mask block by block: memory linear in the length.
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
from protjax.models import layers
from protjax.models import t5

GIN_DIR = t5.GIN_DIR
CONFIG_NAMES = ("protbert_tiny", "protbert_small", "protbert_base", "protbert_paper",
                "protalbert_tiny", "protalbert_small", "protalbert_paper")
# "gelu": exact (erf), as HF BERT; "gelu_new": the tanh approximation, as
# HF ALBERT's default and the original ALBERT code's `gelu`.
ACTIVATIONS = ("gelu", "gelu_new")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture of one ProtBert / ProtAlbert size (every default declared here, once).

  Attributes:
    vocab_size: token ids (ProtBert vocabulary: 30).
    hidden_size: width of the residual stream (`embed`).
    num_layers: encoder depth (ALBERT: how often the shared layer is applied).
    num_heads: attention heads; the head size is hidden_size / num_heads.
    intermediate_size: feed-forward width (`mlp`).
    max_position_embeddings: rows of the learned position table (40,000):
      the longest input, in tokens with [CLS] and [SEP].
    type_vocab_size: token-type rows (2, as the released models; only type 0
      is used).
    embedding_size: ALBERT's factorised embedding width (128); None: the
      hidden size, with no projection (BERT).
    share_layers: one set of layer weights used by every layer (ALBERT).
    hidden_act: "gelu" (exact) | "gelu_new" (tanh approximation).
    layer_norm_epsilon: LayerNorm epsilon (1e-12).
    dropout_rate: hidden and attention-probability dropout (Table 2: 0.0).
    initializer_range: std of the normal initialisation of every weight.
    dtype: compute dtype, "float32" | "bfloat16" | "float16" | "auto"
      ("auto": bfloat16 on accelerators, float32 on CPU). Parameters are
      always created in float32.
    attention_impl: "einsum" | "xla" | "blockwise" (see protjax.models.attention).
    attention_block_size: block length of the blockwise implementation.
    remat: rematerialise each layer in the backward pass.
  """
  vocab_size: int = 30
  hidden_size: int = 1024
  num_layers: int = 30
  num_heads: int = 16
  intermediate_size: int = 4096
  max_position_embeddings: int = 40000
  type_vocab_size: int = 2
  embedding_size: Optional[int] = None
  share_layers: bool = False
  hidden_act: str = "gelu"
  layer_norm_epsilon: float = 1e-12
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  dtype: str = "float32"
  attention_impl: str = "einsum"
  attention_block_size: int = 512
  remat: bool = False

  def __post_init__(self):
    layers.check_compute_options(self.dtype, self.attention_impl, attn_lib.IMPLEMENTATIONS)
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
    sizes = ["vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "attention_block_size"]
    if self.embedding_size is not None:
      sizes.append("embedding_size")
    layers.check_positive_ints(self, sizes)
    layers.check_divisible(self, "hidden_size", "num_heads")
    layers.check_rates(self, ("dropout_rate",))

  @property
  def compute_dtype(self) -> jnp.dtype:
    """The resolved compute dtype ("auto" -> bfloat16 off CPU)."""
    return layers.resolve_dtype(self.dtype)

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def embedding_width(self) -> int:
    """E: the token-embedding width (`embedding_size`, or the hidden size)."""
    return self.hidden_size if self.embedding_size is None else self.embedding_size


GIN_CONFIGURABLES = (BertConfig,)


def get_config(name: str, **overrides) -> BertConfig:
  """The BertConfig of a named size (`gin_configs/models/<name>.gin`) or a gin path.

  Names are the file stems, family first ("protbert_tiny", "protalbert_paper");
  keyword overrides replace fields afterwards, e.g.
  `get_config("protbert_paper", attention_impl="blockwise")`.
  """
  return t5.config_from_gin(BertConfig, name, GIN_DIR / f"{name}.gin", CONFIG_NAMES, **overrides)


# ----------------------------------------------------------------------------- modules

_RESIDUAL = (axes.BATCH, axes.LENGTH, axes.ACT_EMBED)


def activation(name: str):
  """HF's ACT2FN: "gelu" is the exact erf form, "gelu_new" the tanh approximation."""
  return {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
          "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}[name]


def _init(cfg: BertConfig):
  return nn.initializers.normal(stddev=cfg.initializer_range)


def dense(cfg: BertConfig, features, kernel_axes, name: Optional[str] = None
          ) -> layers.DenseGeneral:
  """A biased BERT dense layer, initialised normal(initializer_range)."""
  return layers.DenseGeneral(features, kernel_axes=kernel_axes, dtype=cfg.compute_dtype,
                             kernel_init=_init(cfg), use_bias=True, name=name)


class BertEmbeddings(nn.Module):
  """Word + position + token-type (0) embeddings, LayerNorm, dropout (ALBERT: projection).

  Attributes:
    config: the tables are `config.embedding_width` wide.
    project: ALBERT's projection to the hidden size, inside this module (its
      `projection` subtree). ELECTRA's generator and discriminator share the
      tables but not a width, so each projects for itself (False).
  """
  config: BertConfig
  project: bool = True

  def setup(self):
    cfg = self.config
    table = lambda rows, row_axis: layers.Embed(
        rows, cfg.embedding_width, cfg.compute_dtype, stddev=cfg.initializer_range,
        embedding_axes=(row_axis, axes.TOKEN_EMBED))
    self.word_embeddings = table(cfg.vocab_size, axes.VOCAB)
    self.position_embeddings = table(cfg.max_position_embeddings, axes.ABSPOS)
    self.token_type_embeddings = table(cfg.type_vocab_size, axes.TOKEN_TYPES)
    self.layer_norm = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.compute_dtype,
                                       axis_name=axes.TOKEN_EMBED)
    self.dropout = layers.Dropout(rate=cfg.dropout_rate)
    if cfg.embedding_size is not None and self.project:
      self.projection = dense(cfg, cfg.hidden_size, (axes.TOKEN_EMBED, axes.EMBED))

  def __call__(self, tokens, positions, *, deterministic=True):
    """`[batch, length]` ids, `[batch|1, length]` positions -> `[batch, length, hidden]`."""
    # HF's order: (word + type) + position.
    x = self.word_embeddings(tokens)
    x = x + self.token_type_embeddings(jnp.zeros((1, 1), jnp.int32))
    x = x + self.position_embeddings(positions)
    x = layers.with_sharding_constraint(x, _RESIDUAL)
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    if self.config.embedding_size is not None and self.project:
      x = self.projection(x)
    return layers.with_sharding_constraint(x, _RESIDUAL)

  def attend(self, x):
    """Tied decoder: `[..., E]` -> float32 logits `[..., vocab]`."""
    return self.word_embeddings.attend(x)


class Mlp(nn.Module):
  """Feed-forward `wo(act(wi(x)))` with biases; `[batch, length, hidden]` -> same."""
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = dense(cfg, cfg.intermediate_size, (axes.EMBED, axes.MLP), "wi")(x)
    h = activation(cfg.hidden_act)(h)
    h = layers.with_sharding_constraint(h, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    return dense(cfg, cfg.hidden_size, (axes.MLP, axes.EMBED), "wo")(h)


class EncoderLayer(nn.Module):
  """Post-LayerNorm block: LN(x + attention(x)), then LN(x + mlp(x)), dropout before each add."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    """`[batch, length, hidden]` -> same."""
    cfg, dtype = self.config, self.config.compute_dtype
    drop = layers.Dropout(rate=cfg.dropout_rate)
    h = attn_lib.MultiHeadAttention(
        cfg.num_heads, cfg.head_size, cfg.dropout_rate, cfg.attention_impl,
        cfg.attention_block_size, dtype, use_bias=True, query_scale=cfg.head_size ** -0.5,
        kernel_init=_init(cfg), name="attention")(x, x, mask=mask, deterministic=deterministic)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="attention_layer_norm")(
        x + drop(h, deterministic=deterministic))
    x = layers.with_sharding_constraint(x, _RESIDUAL)
    h = Mlp(cfg, name="mlp")(x)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="mlp_layer_norm")(
        x + drop(h, deterministic=deterministic))
    return layers.with_sharding_constraint(x, _RESIDUAL)


class Encoder(nn.Module):
  """`num_layers` blocks: `layers_{i}` each (BERT), or `shared_layer` every time (ALBERT)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, segments, *, deterministic=True):
    """`[batch, length, hidden]`, segments `[batch, length]` (0 = padding) -> same."""
    cfg = self.config
    mask = attn_lib.AttentionMask(segments, segments, causal=False)
    if cfg.attention_impl != "blockwise":
      mask = mask.materialize()  # once, shared by every layer
    layer_cls = layers.maybe_remat(EncoderLayer, cfg.remat)
    shared = layer_cls(cfg, name="shared_layer") if cfg.share_layers else None
    for i in range(cfg.num_layers):
      layer = shared if shared is not None else layer_cls(cfg, name=f"layers_{i}")
      x = layer(x, mask, deterministic)
    return x


class MlmHead(nn.Module):
  """dense -> act -> LayerNorm -> tied decoder + output bias: float32 `[batch, length, vocab]`."""
  config: BertConfig
  embeddings: nn.Module  # the BertEmbeddings whose word table is the decoder
  # None: the config's `hidden_act`. ELECTRA's generator head is exact GELU
  # whatever its layers use (HF's ElectraGeneratorPredictions).
  hidden_act: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = dense(cfg, cfg.embedding_width, (axes.EMBED, axes.TOKEN_EMBED), "dense")(x)
    h = activation(self.hidden_act or cfg.hidden_act)(h)
    h = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, axis_name=axes.TOKEN_EMBED,
                         name="layer_norm")(h)
    bias = layers.param_with_axes("output_bias", nn.initializers.zeros, (cfg.vocab_size,),
                                  jnp.float32, axes=(axes.VOCAB,))
    logits = self.embeddings.attend(h) + jnp.asarray(bias, jnp.float32)
    return layers.with_sharding_constraint(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))


def _check_length(cfg: BertConfig, tokens) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
  if tokens.shape[1] > cfg.max_position_embeddings:
    raise InputError(f"input length {tokens.shape[1]} exceeds the model's "
                     f"{cfg.max_position_embeddings} position embeddings")


def encode(embeddings, encoder, cfg, tokens, segment_ids, positions, deterministic,
           project=None):
  """The shared forward of every encoder: ids -> last hidden state (compute dtype).

  `project`: a `[..., E] -> [..., hidden]` dense applied to the embeddings
  when they are not projected inside `embeddings` (ELECTRA's two models
  share one table, each projecting to its own width).
  """
  _check_length(cfg, tokens)
  pos = attn_lib.positions_or_arange(tokens.shape[1], positions)
  x = embeddings(tokens, pos, deterministic=deterministic)
  if project is not None:
    x = project(x)
  return encoder(x, attn_lib.token_segments(tokens, segment_ids), deterministic=deterministic)


class BertEncoder(nn.Module):
  """Encoder only (embeddings): exactly the `embeddings` + `encoder` subtrees."""
  config: BertConfig

  def setup(self):
    self.embeddings = BertEmbeddings(self.config)
    self.encoder = Encoder(self.config)

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """`[batch, length]` int (0 = padding) -> `[batch, length, hidden]` (compute dtype).

    Packed rows give `segment_ids` (0 = padding) and `positions` restarting
    at 0 per protein; otherwise positions are 0..length-1.
    """
    return encode(self.embeddings, self.encoder, self.config, tokens, segment_ids, positions,
                  deterministic)


class BertForMaskedLM(nn.Module):
  """Encoder + MLM head. Params: `embeddings`, `encoder`, `mlm_head`."""
  config: BertConfig

  def setup(self):
    self.embeddings = BertEmbeddings(self.config)
    self.encoder = Encoder(self.config)
    self.mlm_head = MlmHead(self.config, self.embeddings)

  def encode(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """Last hidden state `[batch, length, hidden]` (compute dtype), as `BertEncoder`."""
    return encode(self.embeddings, self.encoder, self.config, tokens, segment_ids, positions,
                  deterministic)

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True,
               return_hidden=False):
    """MLM logits `[batch, length, vocab]` float32 (and the hidden state if `return_hidden`)."""
    hidden = self.encode(tokens, segment_ids, positions, deterministic=deterministic)
    logits = self.mlm_head(hidden)
    return (logits, hidden) if return_hidden else logits


def encoder_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The `embeddings` + `encoder` subtrees of full params (for BertEncoder)."""
  missing = [k for k in ("embeddings", "encoder") if k not in params]
  if missing:
    raise InputError(f"params have no {' / '.join(missing)} subtree (not a ProtBert / "
                     "ProtAlbert tree?)")
  return {"embeddings": params["embeddings"], "encoder": params["encoder"]}


# ----------------------------------------------------------------------------- counting

def param_count(config: BertConfig) -> tuple[int, int]:
  """(total with the MLM head, encoder) parameter counts, from abstract shapes."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(lambda rng, t: BertForMaskedLM(config).init(rng, t)["params"],
                          jax.random.PRNGKey(0), tokens)
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  return size(params), size(encoder_params(params))


def encoder_flops(config: BertConfig, length: int) -> float:
  """Forward FLOPs of the encoder (no MLM head) for one sequence of `length` tokens.

  Matmuls only: 2 FLOPs per multiply-add for every weight a token goes
  through, ALBERT's shared layer once per application (sharing saves
  parameters, not compute) and its projection, plus the attention score and
  value products (`4 * length * hidden` per token and layer). Embedding
  gathers, biases and norms are not counted.
  """
  c = config
  per_layer = 2 * (4 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.intermediate_size)
  per_layer += 4 * length * c.hidden_size
  projection = 0 if c.embedding_size is None else 2 * c.embedding_width * c.hidden_size
  return float(length * (c.num_layers * per_layer + projection))


def flops_per_token(config: BertConfig, length: int) -> float:
  """Training FLOPs per input position (forward + backward = 3x forward): the
  encoder's (`encoder_flops`) and the MLM head's on every position (dense and
  tied decoder), as `t5.flops_per_token` counts them.
  """
  c = config
  head = 2 * c.hidden_size * c.embedding_width + 2 * c.embedding_width * c.vocab_size
  return 3.0 * (encoder_flops(c, length) / length + head)


# ----------------------------------------------------------------------------- Model wrapper

def _loss_and_metrics(logits, batch):
  """Cross-entropy over the loss-weighted (masked) positions, and scalar metrics.

  Args:
    logits: `[batch, length, vocab]` float32.
    batch: with `encoder_target_tokens` (the original ids) and
      `encoder_loss_weights` (1 where the objective masked: [MASK], random or
      kept residue).
  """
  return token_loss_and_metrics(logits, batch["encoder_target_tokens"],
                                batch["encoder_loss_weights"])


def token_loss_and_metrics(logits, targets, weights):
  """Cross-entropy over the loss-weighted positions, and scalar metrics.

  Args:
    logits: `[batch, length, vocab]`.
    targets: `[batch, length]` ids to predict.
    weights: `[batch, length]`, 1 at the positions the objective scores.
  """
  targets = targets.astype(jnp.int32)
  weights = jnp.asarray(weights, jnp.float32)
  logits = jnp.asarray(logits, jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  num = jnp.sum(weights)
  denom = jnp.maximum(num, 1.0)
  cross_entropy = jnp.sum((log_z - target_logit) * weights) / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  accuracy = jnp.sum(correct * weights) / denom
  metrics = {
      "loss": cross_entropy,
      "cross_entropy": cross_entropy,
      "accuracy": accuracy,
      # The weighted positions are the masked residues (ProtTXL: every next
      # residue): the two are one figure (the trainer's console line prints
      # this name for every family).
      "masked_residue_accuracy": accuracy,
      "num_tokens": num,
  }
  return cross_entropy, metrics


def _length(batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
  try:
    return int(batch_shapes["encoder_input_tokens"][1])
  except KeyError:
    raise InputError("an encoder (MLM) model needs feature 'encoder_input_tokens'; the batch "
                     f"has {sorted(batch_shapes)}") from None


class EncoderMLMModel:
  """t5x-style Model for masked language modelling (the trainer's `Model` protocol).

  Attributes:
    config: the BertConfig.
    module: the `BertForMaskedLM` linen module.
    family: "protbert" or "protalbert" (by `share_layers`; settable).
  """

  def __init__(self, config: BertConfig):
    self.config = config
    self.module = BertForMaskedLM(config)
    self.family = "protalbert" if config.share_layers else "protbert"

  def init_variables(self, rng, batch_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """`{'params': ..., 'params_axes': ...}`; works under `jax.eval_shape`."""
    tokens = jnp.ones((1, _length(batch_shapes)), jnp.int32)
    variables = self.module.init({"params": rng}, tokens, deterministic=True)
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  def apply(self, params, batch, dropout_rng=None):
    """MLM logits `[batch, length, vocab]` float32 for an "encoder" feature batch."""
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch.get("encoder_segment_ids"),
        batch.get("encoder_positions"), deterministic=dropout_rng is None, rngs=rngs)

  def loss_fn(self, params, batch, dropout_rng):
    """(loss, metrics); `dropout_rng=None` means deterministic (no dropout)."""
    return _loss_and_metrics(self.apply(params, batch, dropout_rng), batch)

  def flops_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> float:
    length = _length(batch_shapes)
    return flops_per_token(self.config, length) * length

  def tokens_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
    return _length(batch_shapes)
