"""ProtElectra: ELECTRA's generator and discriminator, trained together, in Flax linen.

Replaced-token detection (Clark et al. 2020) as ProtTrans ran it (Table 2): a
discriminator of ProtBert's shape (30 layers, hidden 1024, 16 heads,
intermediate 4096, 40,000 positions) and a generator of the same depth with
25% of its hidden size, intermediate size and heads. Every block is
`protjax.models.bert`'s; the layouts are Hugging Face's `ElectraForPreTraining`
(discriminator) and `ElectraForMaskedLM` (generator), so weights map one to
one (`protjax.hf.electra`):

- the two models share the word, position and token-type tables and their
  LayerNorm (`embeddings`, E = `embedding_size` wide), as ELECTRA's own code
  does; each projects them to its hidden size when that differs from E
  (`embeddings_project`, HF's name);
- the generator's head is BERT's MLM head (dense to E, exact GELU, LayerNorm,
  the shared word table as decoder plus an output bias);
- the discriminator's head is HF's `ElectraDiscriminatorPredictions`: dense,
  activation, a one-output dense: one "replaced" logit per position.

Parameter tree of the training model (`ElectraRTD`; every parameter made
with `param_with_axes`; `L` = `layers_{i}`, each as BERT's):

  embeddings/...                                  shared; BERT's, without projection
  embeddings_project/kernel, bias                 [token_embed, embed], [embed]  (E != hidden)
  encoder/L/...                                   the discriminator's layers
  discriminator_head/dense/kernel, bias           [embed, mlp], [mlp]
  discriminator_head/dense_prediction/kernel      [mlp]
  discriminator_head/dense_prediction/bias        []
  generator/embeddings_project/kernel, bias       [token_embed, embed], [embed]  (E != its hidden)
  generator/encoder/L/...                         the generator's layers
  generator/mlm_head/...                          BERT's MLM head

The head's inner width is named `mlp` (it is the head's hidden layer), so its
kernel never names `embed` twice; the generator's axes are the
discriminator's names (each model's widths split by the same rules).
`ElectraEncoder` (HF's `ElectraModel`, what protjax-embed runs: the paper
embedded the discriminator) has exactly `embeddings`, `embeddings_project`
and `encoder`; `ElectraForPreTraining` adds `discriminator_head`;
`ElectraForMaskedLM` is `embeddings` + `generator`.

The objective (`ElectraRTDModel.loss_fn`), as ELECTRA's pretraining code:
1. the pipeline's "electra" batches: 25% of the residues selected, BERT's
   80/10/10 on them (`encoder_input_tokens`), loss weights at the selected;
2. the generator's MLM loss on the selected positions;
3. at each selected position a token sampled from the generator's softmax
   (never [PAD], which protjax reads as padding), no gradient through it;
4. the discriminator reads the original with those samples in place and
   predicts at every non-padding position whether the token differs from the
   original (a position sampled back to its original is "original");
5. loss = generator loss + `discriminator_weight` (50) x the discriminator's
   mean binary cross-entropy.
The sampling key comes from the step's rng, so a resumed run samples the
same replacements; without one (evaluation, `train.dropout=False`) from a
fingerprint of the batch, so the loss stays a pure function of (params, batch).
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
from protjax.models import t5

GIN_DIR = t5.GIN_DIR
CONFIG_NAMES = ("protelectra_tiny", "protelectra_small", "protelectra_base",
                "protelectra_paper", "protelectra_mini_wide")
ENCODER, DISCRIMINATOR, GENERATOR = "encoder", "discriminator", "generator"
KINDS = (ENCODER, DISCRIMINATOR, GENERATOR)
# The subtrees each kind of model holds (`embeddings_project` only where E
# differs from the discriminator's hidden size).
_SUBTREES = {ENCODER: ("embeddings", "embeddings_project", "encoder"),
             DISCRIMINATOR: ("embeddings", "embeddings_project", "encoder", "discriminator_head"),
             GENERATOR: ("embeddings", "generator")}
_OPTIONAL = ("embeddings_project",)
# protjax reads padding from id 0 (`attention.token_segments`): a sampled
# [PAD] would hide its position from attention, so the sampler never draws it.
PAD_ID = 0
# Sampling without a step rng: a fixed key folded with the batch's fingerprint.
SAMPLING_SEED = 0x5EED
_PURPOSE_GENERATOR, _PURPOSE_DISCRIMINATOR, _PURPOSE_SAMPLE = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
  """Architecture of one ProtElectra size: the discriminator, the generator, the loss weight.

  The discriminator's fields are `BertConfig`'s (same names, same meaning);
  the generator takes everything but its four sizes from them.

  Attributes:
    vocab_size: token ids (the ProtBert vocabulary: 30).
    hidden_size, num_layers, num_heads, intermediate_size: the discriminator.
    embedding_size: E, the width of the shared tables (ProtElectra: 1024,
      the discriminator's hidden size, so only the generator projects).
    generator_hidden_size, generator_num_layers, generator_num_heads,
      generator_intermediate_size: the generator (Table 2: 25% of the
      discriminator's hidden size, intermediate size and heads; same depth).
    max_position_embeddings: rows of the shared position table (40,000).
    type_vocab_size: token-type rows (2; only type 0 is used).
    hidden_act: "gelu" (exact) | "gelu_new" (tanh), both models' layers and
      the discriminator head (the generator's head is exact GELU, as HF's).
    layer_norm_epsilon, dropout_rate, initializer_range: as `BertConfig`'s.
    discriminator_weight: the discriminator loss's weight in the total (50).
    dtype, attention_impl, attention_block_size, remat: as `BertConfig`'s.
  """
  vocab_size: int = 30
  hidden_size: int = 1024
  num_layers: int = 30
  num_heads: int = 16
  intermediate_size: int = 4096
  embedding_size: int = 1024
  generator_hidden_size: int = 256
  generator_num_layers: int = 30
  generator_num_heads: int = 4
  generator_intermediate_size: int = 1024
  max_position_embeddings: int = 40000
  type_vocab_size: int = 2
  hidden_act: str = "gelu"
  layer_norm_epsilon: float = 1e-12
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  discriminator_weight: float = 50.0
  dtype: str = "float32"
  attention_impl: str = "einsum"
  attention_block_size: int = 512
  remat: bool = False

  def __post_init__(self):
    layers.check_positive_ints(self, (
        "embedding_size", "generator_hidden_size", "generator_num_layers",
        "generator_num_heads", "generator_intermediate_size"))
    layers.check_divisible(self, "generator_hidden_size", "generator_num_heads")
    weight = self.discriminator_weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
      raise ValueError(f"ElectraConfig.discriminator_weight must be positive, got {weight!r}")
    try:  # the shared fields, checked once by BertConfig
      self.discriminator  # pylint: disable=pointless-statement
    except ValueError as e:
      raise ValueError(str(e).replace("BertConfig.", "ElectraConfig.")) from None

  def _bert(self, hidden: int, layers_: int, heads: int, intermediate: int) -> bert.BertConfig:
    return bert.BertConfig(
        vocab_size=self.vocab_size, hidden_size=hidden, num_layers=layers_, num_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=self.max_position_embeddings,
        type_vocab_size=self.type_vocab_size,
        embedding_size=None if self.embedding_size == hidden else self.embedding_size,
        share_layers=False, hidden_act=self.hidden_act,
        layer_norm_epsilon=self.layer_norm_epsilon, dropout_rate=self.dropout_rate,
        initializer_range=self.initializer_range, dtype=self.dtype,
        attention_impl=self.attention_impl, attention_block_size=self.attention_block_size,
        remat=self.remat)

  @property
  def discriminator(self) -> bert.BertConfig:
    """The discriminator as a `BertConfig` (embedding_size None when E = its hidden size)."""
    return self._bert(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size)

  @property
  def generator(self) -> bert.BertConfig:
    """The generator as a `BertConfig` (its tables E wide: the discriminator's)."""
    return self._bert(self.generator_hidden_size, self.generator_num_layers,
                      self.generator_num_heads, self.generator_intermediate_size)

  @property
  def compute_dtype(self) -> jnp.dtype:
    return self.discriminator.compute_dtype


GIN_CONFIGURABLES = (ElectraConfig,)


def get_config(name: str, **overrides) -> ElectraConfig:
  """The ElectraConfig of a named size (`gin_configs/models/<name>.gin`) or a gin path.

  Names are the file stems ("protelectra_tiny", "protelectra_paper"); keyword
  overrides replace fields afterwards.
  """
  return t5.config_from_gin(ElectraConfig, name, GIN_DIR / f"{name}.gin", CONFIG_NAMES, **overrides)


# ----------------------------------------------------------------------------- modules

def _projection(cfg: bert.BertConfig) -> Optional[nn.Module]:
  """`embeddings_project` (E -> the model's hidden size), or None where they are equal."""
  if cfg.embedding_size is None:
    return None
  return bert.dense(cfg, cfg.hidden_size, (axes.TOKEN_EMBED, axes.EMBED))


class DiscriminatorHead(nn.Module):
  """dense -> act -> one-output dense: float32 "replaced" logits `[batch, length]`."""
  config: bert.BertConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = bert.dense(cfg, cfg.hidden_size, (axes.EMBED, axes.MLP), "dense")(x)
    h = bert.activation(cfg.hidden_act)(h)
    h = layers.with_sharding_constraint(h, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    logits = bert.dense(cfg, (), (axes.MLP,), "dense_prediction")(h)
    return layers.with_sharding_constraint(jnp.asarray(logits, jnp.float32),
                                           (axes.BATCH, axes.LENGTH))


class Generator(nn.Module):
  """The generator on the shared tables: projection, BERT layers, MLM head.

  Params: `embeddings_project` (if E differs from its hidden size), `encoder`,
  `mlm_head`; the tables are `embeddings`' (the parent's).
  """
  config: bert.BertConfig  # the generator's (`ElectraConfig.generator`)
  embeddings: nn.Module  # the shared BertEmbeddings

  def setup(self):
    self.embeddings_project = _projection(self.config)
    self.encoder = bert.Encoder(self.config)
    self.mlm_head = bert.MlmHead(self.config, self.embeddings, hidden_act="gelu")

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True,
               return_hidden=False):
    """MLM logits `[batch, length, vocab]` float32 (and its last hidden state)."""
    hidden = bert.encode(self.embeddings, self.encoder, self.config, tokens, segment_ids,
                         positions, deterministic, project=self.embeddings_project)
    logits = self.mlm_head(hidden)
    return (logits, hidden) if return_hidden else logits


class ElectraEncoder(nn.Module):
  """The discriminator's encoder (HF `ElectraModel`): embeddings, projection, layers.

  Params: `embeddings`, `embeddings_project` (when E differs from the hidden
  size), `encoder`: what protjax-embed loads.
  """
  config: ElectraConfig

  def setup(self):
    d = self.config.discriminator
    self.embeddings = bert.BertEmbeddings(d, project=False)
    self.embeddings_project = _projection(d)
    self.encoder = bert.Encoder(d)

  def encode(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """`[batch, length]` int (0 = padding) -> `[batch, length, hidden]` (compute dtype)."""
    return bert.encode(self.embeddings, self.encoder, self.config.discriminator, tokens,
                       segment_ids, positions, deterministic, project=self.embeddings_project)

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """As `bert.BertEncoder`: packed rows give `segment_ids` and `positions`."""
    return self.encode(tokens, segment_ids, positions, deterministic=deterministic)


class ElectraForPreTraining(ElectraEncoder):
  """The discriminator with its head (HF `ElectraForPreTraining`)."""

  def setup(self):
    super().setup()
    self.discriminator_head = DiscriminatorHead(self.config.discriminator)

  def discriminate(self, tokens, segment_ids=None, positions=None, *, deterministic=True,
                   return_hidden=False):
    """"Replaced" logits `[batch, length]` float32 (and the last hidden state)."""
    hidden = self.encode(tokens, segment_ids, positions, deterministic=deterministic)
    logits = self.discriminator_head(hidden)
    return (logits, hidden) if return_hidden else logits

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True,
               return_hidden=False):
    return self.discriminate(tokens, segment_ids, positions, deterministic=deterministic,
                             return_hidden=return_hidden)


class ElectraForMaskedLM(nn.Module):
  """The generator with the shared tables (HF `ElectraForMaskedLM`): `embeddings`, `generator`."""
  config: ElectraConfig

  def setup(self):
    self.embeddings = bert.BertEmbeddings(self.config.discriminator, project=False)
    self.generator = Generator(self.config.generator, self.embeddings)

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True,
               return_hidden=False):
    return self.generator(tokens, segment_ids, positions, deterministic=deterministic,
                          return_hidden=return_hidden)


class ElectraRTD(ElectraForPreTraining):
  """Both models on one set of tables: the training tree (see the module docstring)."""

  def setup(self):
    super().setup()
    self.generator = Generator(self.config.generator, self.embeddings)

  def generate(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """The generator's MLM logits `[batch, length, vocab]` float32."""
    return self.generator(tokens, segment_ids, positions, deterministic=deterministic)

  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """(generator logits, discriminator logits) on the same tokens (for `init`)."""
    return (self.generate(tokens, segment_ids, positions, deterministic=deterministic),
            self.discriminate(tokens, segment_ids, positions, deterministic=deterministic))


def kind_params(params: Mapping[str, Any], kind: str) -> dict[str, Any]:
  """The subtrees a `kind` model ("encoder", "discriminator", "generator") holds."""
  if kind not in KINDS:
    raise InputError(f"a ProtElectra model is one of {KINDS}, not {kind!r}")
  missing = [k for k in _SUBTREES[kind] if k not in params and k not in _OPTIONAL]
  if missing:
    holds = "the generator" if "generator" in params and "encoder" not in params else (
        "the discriminator" if "encoder" in params else "neither model")
    raise InputError(f"params have no {' / '.join(missing)} subtree, needed for the ProtElectra "
                     f"{kind}: they hold {holds}")
  return {k: params[k] for k in _SUBTREES[kind] if k in params}


def encoder_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The discriminator encoder's subtrees of any tree that holds them (for ElectraEncoder)."""
  return kind_params(params, ENCODER)


# ----------------------------------------------------------------------------- counting

def param_counts(config: ElectraConfig) -> dict[str, int]:
  """Parameter counts from abstract shapes: "training" (both models, the tables
  once), "discriminator" (`ElectraForPreTraining`), "generator"
  (`ElectraForMaskedLM`, the tables included), "encoder" (`ElectraModel`)."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(lambda rng, t: ElectraRTD(config).init(rng, t)["params"],
                          jax.random.PRNGKey(0), tokens)
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  counts = {"training": size(params)}
  counts.update({kind: size(kind_params(params, kind)) for kind in KINDS})
  return counts


def param_count(config: ElectraConfig) -> tuple[int, int]:
  """(the training tree, the discriminator's encoder), as every family's `param_count`."""
  counts = param_counts(config)
  return counts["training"], counts[ENCODER]


def encoder_flops(config: ElectraConfig, length: int) -> float:
  """Forward FLOPs of the discriminator's encoder (what embed runs), as `bert.encoder_flops`."""
  return bert.encoder_flops(config.discriminator, length)


def flops_per_token(config: ElectraConfig, length: int) -> float:
  """Training FLOPs per input position (forward + backward = 3x forward) of both
  models: the generator as `bert.flops_per_token` counts a BERT MLM model
  (its projection, layers, and MLM head and tied decoder on every position),
  the discriminator's encoder and its head. The sampling is not counted."""
  d = config.discriminator
  head = 2 * d.hidden_size * d.hidden_size + 2 * d.hidden_size
  return (bert.flops_per_token(config.generator, length)
          + 3.0 * (encoder_flops(config, length) / length + head))


# ----------------------------------------------------------------------------- objective

def batch_fingerprint(tokens: jnp.ndarray) -> jnp.ndarray:
  """A uint32 hash of `[batch, length]` ids, the same however the batch is sharded.

  Each id is mixed with its flat index (a multiplicative hash and xorshifts),
  then summed with wrap-around, which no reduction order changes.
  """
  shape = tokens.shape
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 1, -1, -1):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  h = tokens.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + index * jnp.uint32(0x85EBCA77)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x2C1B3C6D)
  h = h ^ (h >> 12)
  return jnp.sum(h, dtype=jnp.uint32)


def step_keys(rng: Optional[jax.Array], batch: Mapping[str, Any]):
  """(generator dropout, discriminator dropout, sampling) keys of one step.

  With the trainer's rng (`fold_in(state.rng, step)`, `fold_in(rng, i)` per
  micro-batch): three keys folded from it. Without (evaluation,
  `train.dropout=False`): no dropout, and `SAMPLING_SEED` folded with the
  batch's fingerprint, so the same batch samples the same replacements.
  """
  if rng is None:
    key = jax.random.PRNGKey(SAMPLING_SEED)
    return None, None, jax.random.fold_in(key, batch_fingerprint(batch["encoder_input_tokens"]))
  return tuple(jax.random.fold_in(rng, purpose)
               for purpose in (_PURPOSE_GENERATOR, _PURPOSE_DISCRIMINATOR, _PURPOSE_SAMPLE))


def replace_tokens(rng: jax.Array, generator_logits, batch: Mapping[str, Any]) -> jnp.ndarray:
  """The discriminator's input `[batch, length]` int32: the original tokens
  with each masked position replaced by a sample of the generator's softmax.

  The sample is never [PAD], and no gradient flows through it.
  """
  logits = jax.lax.stop_gradient(jnp.asarray(generator_logits, jnp.float32))
  logits = logits.at[..., PAD_ID].set(-jnp.inf)
  sampled = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
  targets = batch["encoder_target_tokens"].astype(jnp.int32)
  return jnp.where(jnp.asarray(batch["encoder_loss_weights"]) > 0, sampled, targets)


def _masked_mean(values, where):
  return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(jnp.sum(where), 1)


def rtd_loss_and_metrics(generator_logits, discriminator_logits, replaced_tokens,
                         batch: Mapping[str, Any], discriminator_weight: float):
  """generator MLM loss + weight x discriminator loss, and scalar metrics.

  Args:
    generator_logits: `[batch, length, vocab]` float32, on the masked input.
    discriminator_logits: `[batch, length]` float32, on `replaced_tokens`.
    replaced_tokens: `replace_tokens`' output.
    batch: with `encoder_target_tokens` (the originals), `encoder_loss_weights`
      (the masked positions) and optionally `encoder_segment_ids`.
  Metrics: the generator's `cross_entropy` and `accuracy` /
  `masked_residue_accuracy` over the masked positions (`num_tokens`, the
  trainer's weight), `discriminator_loss`, the discriminator's accuracy over
  every non-padding position and over the replaced and the original ones
  apart, and `replacement_rate`: the share of masked positions whose sample
  differs from the original.
  """
  generator_loss, metrics = bert._loss_and_metrics(  # pylint: disable=protected-access
      generator_logits, batch)
  targets = batch["encoder_target_tokens"].astype(jnp.int32)
  real = attn_lib.token_segments(targets, batch.get("encoder_segment_ids")) > 0
  labels = replaced_tokens != targets
  x = jnp.asarray(discriminator_logits, jnp.float32)
  # Binary cross-entropy with logits, stable for either sign.
  bce = jnp.maximum(x, 0.0) - x * labels + jnp.log1p(jnp.exp(-jnp.abs(x)))
  discriminator_loss = _masked_mean(bce, real)
  says_replaced = x > 0
  replaced, original = labels & real, ~labels & real
  loss = generator_loss + discriminator_weight * discriminator_loss
  metrics = dict(
      metrics, loss=loss, generator_loss=generator_loss, discriminator_loss=discriminator_loss,
      discriminator_accuracy=_masked_mean(says_replaced == labels, real),
      discriminator_replaced_accuracy=_masked_mean(says_replaced, replaced),
      discriminator_original_accuracy=_masked_mean(~says_replaced, original),
      replacement_rate=jnp.sum(replaced) / jnp.maximum(metrics["num_tokens"], 1.0))
  return loss, metrics


def _length(batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
  return bert._length(batch_shapes)  # pylint: disable=protected-access


class ElectraRTDModel:
  """t5x-style Model for replaced-token detection (the trainer's `Model` protocol).

  One `loss_fn` runs both models: the trainer's loop is every family's.

  Attributes:
    config: the ElectraConfig.
    module: the `ElectraRTD` linen module (both models).
    family: "protelectra".
  """

  def __init__(self, config: ElectraConfig):
    self.config = config
    self.module = ElectraRTD(config)
    self.family = "protelectra"

  def init_variables(self, rng, batch_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """`{'params': ..., 'params_axes': ...}`; works under `jax.eval_shape`."""
    tokens = jnp.ones((1, _length(batch_shapes)), jnp.int32)
    variables = self.module.init({"params": rng}, tokens, deterministic=True)
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  def apply(self, params, tokens, batch, method: str, dropout_rng=None):
    """One model (`method`: "generate" | "discriminate") on `tokens`, with the
    batch's segment ids and positions."""
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply(
        {"params": params}, tokens, batch.get("encoder_segment_ids"),
        batch.get("encoder_positions"), deterministic=dropout_rng is None, rngs=rngs,
        method=method)

  def forward(self, params, batch, dropout_rng=None):
    """(generator logits, replaced tokens, discriminator logits) of one step."""
    generator_rng, discriminator_rng, sample_rng = step_keys(dropout_rng, batch)
    generator_logits = self.apply(params, batch["encoder_input_tokens"], batch, "generate",
                                  generator_rng)
    replaced = replace_tokens(sample_rng, generator_logits, batch)
    return generator_logits, replaced, self.apply(params, replaced, batch, "discriminate",
                                                  discriminator_rng)

  def loss_fn(self, params, batch, dropout_rng):
    """(loss, metrics); `dropout_rng=None` means no dropout (sampling still seeded)."""
    generator_logits, replaced, discriminator_logits = self.forward(params, batch, dropout_rng)
    return rtd_loss_and_metrics(generator_logits, discriminator_logits, replaced, batch,
                                self.config.discriminator_weight)

  def flops_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> float:
    length = _length(batch_shapes)
    return flops_per_token(self.config, length) * length

  def tokens_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]) -> int:
    return _length(batch_shapes)
