"""ProtT5: the original T5 (v1.0) encoder-decoder in Flax linen, as ProtTrans trained it.

ReLU (non-gated) feed-forward, tied input embedding / output softmax (logits
scaled by `d_model**-0.5`), float32 RMS layer norm, no attention-logit
scaling, one relative-position bias table per stack (32 buckets, max distance
128) added in every layer of the stack, dropout after the embedding, inside
the MLP, on the attention weights and after every sub-layer and the final
norm (as HF transformers' T5).

Parameter tree (`variables["params"]`; every kernel made with `param_with_axes`,
so a `params_axes` collection holds its logical names; no biases anywhere):

  token_embedder/embedding                              [vocab, embed]
  encoder/relpos_bias/rel_embedding                     [heads, relpos_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale     [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel [embed, heads, kv]
  encoder/layers_{i}/attention/out/kernel               [heads, kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale           [embed]
  encoder/layers_{i}/mlp/wi/kernel                      [embed, mlp]
  encoder/layers_{i}/mlp/wo/kernel                      [mlp, embed]
  encoder/encoder_norm/scale                            [embed]
  decoder/relpos_bias/rel_embedding                     [heads, relpos_buckets]
  decoder/layers_{i}/pre_self_attention_layer_norm/scale
  decoder/layers_{i}/self_attention/{query,key,value,out}/kernel
  decoder/layers_{i}/pre_cross_attention_layer_norm/scale
  decoder/layers_{i}/encoder_decoder_attention/{query,key,value,out}/kernel
  decoder/layers_{i}/pre_mlp_layer_norm/scale
  decoder/layers_{i}/mlp/{wi,wo}/kernel
  decoder/decoder_norm/scale

`T5Encoder` has exactly the `token_embedder` and `encoder` subtrees
(`protjax.hf.t5` maps this tree to and from Hugging Face T5 names).

Packing: segment ids (0 = padding) restrict attention to the same protein,
and positions (restarting at 0 per protein) give the relative buckets, so a
packed row computes exactly what each protein alone would.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protjax import axes
from protjax.errors import InputError
from protjax.models import attention as attn_lib
from protjax.models import layers

GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin_configs" / "models"
CONFIG_NAMES = ("tiny", "small", "base", "large", "xl", "xxl")
# ProtT5's masking sentinel <extra_id_0> (protjax.vocab.ProtT5Vocabulary.mask_id).
MASK_ID = 127
Z_LOSS = 1e-4


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of one ProtT5 size (every default declared here, once).

  Attributes:
    vocab_size: token ids (ProtT5 vocabulary: 128).
    d_model: width of the residual stream (`embed`).
    d_ff: feed-forward width (`mlp`).
    num_heads: attention heads (`heads`).
    d_kv: size of each head (`kv`); need not be d_model / num_heads.
    num_encoder_layers, num_decoder_layers: stack depths.
    relative_attention_num_buckets: relative-position buckets (32).
    relative_attention_max_distance: distances beyond share a bucket (128).
    dropout_rate: everywhere dropout is applied (pretraining: 0.1).
    layer_norm_epsilon: RMS norm epsilon.
    dtype: compute dtype, "float32" | "bfloat16" | "float16" | "auto"
      ("auto": bfloat16 on accelerators, float32 on CPU). Parameters are
      always created in float32.
    attention_impl: "einsum" (reference) | "xla" (jax.nn.dot_product_attention,
      cuDNN on GPU) | "blockwise" (memory linear in length, for long proteins).
    attention_block_size: block length of the blockwise implementation.
    remat: rematerialise each layer in the backward pass (saves activation
      memory for large models at ~1/3 more compute).
  """
  vocab_size: int = 128
  d_model: int = 512
  d_ff: int = 2048
  num_heads: int = 8
  d_kv: int = 64
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  attention_impl: str = "einsum"
  attention_block_size: int = 512
  remat: bool = False

  def __post_init__(self):
    layers.check_compute_options(self.dtype, self.attention_impl, attn_lib.IMPLEMENTATIONS)
    layers.check_positive_ints(self, ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv",
                                      "relative_attention_num_buckets",
                                      "attention_block_size"))
    layers.check_rates(self, ("dropout_rate",))

  @property
  def compute_dtype(self) -> jnp.dtype:
    """The resolved compute dtype ("auto" -> bfloat16 off CPU)."""
    return layers.resolve_dtype(self.dtype)


GIN_CONFIGURABLES = (T5Config,)


# ----------------------------------------------------------------------------- configs

def read_gin_bindings(path: pathlib.Path, config_cls: type, seen: tuple = ()) -> dict[str, Any]:
  """`<ConfigClass>.<field> = <literal>` bindings of a gin file (following `include`s).

  Uses gin's own parser but not its global registry, so `get_config` has no
  side effects on the process's gin state (a trainer may parse other files).
  Shared by every family's `get_config` (`config_cls`: T5Config, BertConfig).
  """
  from gin import config_parser  # gin stays out of module import time.

  class _NoReferences(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
      raise InputError(f"model gin files hold literals only, found @{scoped_configurable_name}",
                       path=str(path))

    def macro(self, macro_name):
      raise InputError(f"model gin files hold literals only, found %{macro_name}",
                       path=str(path))

  if path in seen:
    raise InputError("gin include cycle", path=str(path))
  if not path.is_file():
    raise InputError("model gin file not found", path=str(path))
  bindings: dict[str, Any] = {}
  fields = {f.name for f in dataclasses.fields(config_cls)}
  name = config_cls.__name__
  with open(path) as f:
    parser = config_parser.ConfigParser(f, _NoReferences())
    for statement in parser:
      if isinstance(statement, config_parser.IncludeStatement):
        included = pathlib.Path(statement.filename)
        if not included.is_absolute():
          # gin resolves includes against its search path: the project's own
          # files say `include 'gin_configs/...'`, relative to the repo root.
          beside = path.parent / included
          included = beside if beside.is_file() else GIN_DIR.parents[1] / included
        bindings.update(read_gin_bindings(included.resolve(), config_cls, seen + (path,)))
      elif isinstance(statement, config_parser.BindingStatement):
        if statement.selector.split(".")[-1] != name or statement.scope:
          continue  # not ours (a run gin may bind other things)
        if statement.arg_name not in fields:
          raise InputError(f"unknown {name} field {statement.arg_name!r}", path=str(path),
                           position=statement.location.line_num)
        bindings[statement.arg_name] = statement.value
  return bindings


def get_config(name: str, **overrides) -> T5Config:
  """The T5Config of a named size (`gin_configs/models/prott5_<name>.gin`) or a gin path.

  Keyword overrides replace fields afterwards, e.g.
  `get_config("small", attention_impl="blockwise")`.
  """
  return config_from_gin(T5Config, name, GIN_DIR / f"prott5_{name}.gin", CONFIG_NAMES,
                         **overrides)


def config_from_gin(config_cls, name: str, sized: pathlib.Path, names, **overrides):
  """`config_cls` from the gin file `sized` when `name` is one of `names`, else
  from the gin file at path `name`; keyword overrides replace fields after.
  Every family's `get_config` is this; bad values are InputErrors naming the file."""
  path = sized if name in names else pathlib.Path(name)
  if name not in names and not path.is_file():
    raise InputError(f"unknown model config {name!r}; choose one of {names} "
                     "or give a gin file path")
  bindings = read_gin_bindings(path.resolve(), config_cls)
  bindings.update(overrides)
  try:
    return config_cls(**bindings)
  except (TypeError, ValueError) as e:
    raise InputError(str(e), path=str(path)) from e


# ----------------------------------------------------------------------------- modules

_RESIDUAL = (axes.BATCH, axes.LENGTH, axes.ACT_EMBED)


_segments = attn_lib.token_segments
_positions = attn_lib.positions_or_arange


def _prepare(config: T5Config, bias, mask):
  """Materialise bias/mask once per stack unless blockwise evaluates them per block."""
  if config.attention_impl == "blockwise":
    return bias, mask
  return (None if bias is None else bias.materialize()), mask.materialize()


def _maybe_remat(cls, config: T5Config):
  """`cls`, rematerialised if `config.remat`; `deterministic` (last argument) stays static."""
  return layers.maybe_remat(cls, config.remat)


def _attention(cfg: T5Config, name: str) -> attn_lib.MultiHeadAttention:
  """The attention sub-layer every encoder/decoder attention uses."""
  return attn_lib.MultiHeadAttention(
      cfg.num_heads, cfg.d_kv, cfg.dropout_rate, cfg.attention_impl,
      cfg.attention_block_size, cfg.compute_dtype, name=name)


def _residual_adder(cfg: T5Config, deterministic: bool):
  """`add(x, h)`: x + dropout(h), clamped in float16, constrained as the residual stream.

  Must be called inside a compact module: the Dropout it makes belongs to it.
  """
  drop = layers.Dropout(rate=cfg.dropout_rate)

  def add(x, h):
    x = layers.clamp_half(x + drop(h, deterministic=deterministic))
    return layers.with_sharding_constraint(x, _RESIDUAL)

  return add


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + ReLU MLP, each with dropout before the residual add."""
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, mask, deterministic: bool):
    """`[batch, length, embed]` -> same."""
    cfg, dtype = self.config, self.config.compute_dtype
    add = _residual_adder(cfg, deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = _attention(cfg, "attention")(h, h, bias=bias, mask=mask, deterministic=deterministic)
    x = add(x, h)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = layers.MlpBlock(cfg.d_ff, cfg.dropout_rate, dtype, name="mlp")(h, deterministic)
    return add(x, h)


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention (no position bias), ReLU MLP."""
  config: T5Config

  @nn.compact
  def __call__(self, y, encoded, self_bias, self_mask, cross_mask, deterministic: bool):
    """`[batch, target, embed]`, `[batch, input, embed]` -> `[batch, target, embed]`."""
    cfg, dtype = self.config, self.config.compute_dtype
    add = _residual_adder(cfg, deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(y)
    h = _attention(cfg, "self_attention")(h, h, bias=self_bias, mask=self_mask,
                                          deterministic=deterministic)
    y = add(y, h)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(y)
    h = _attention(cfg, "encoder_decoder_attention")(h, encoded, bias=None, mask=cross_mask,
                                                     deterministic=deterministic)
    y = add(y, h)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(y)
    h = layers.MlpBlock(cfg.d_ff, cfg.dropout_rate, dtype, name="mlp")(h, deterministic)
    return add(y, h)


class Encoder(nn.Module):
  """Embedding -> N encoder layers -> final RMS norm. Bias table `relpos_bias`."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
    """`[batch, length]` int -> `[batch, length, embed]`."""
    cfg = self.config
    assert tokens.ndim == 2, tokens.shape
    drop = layers.Dropout(rate=cfg.dropout_rate)
    x = self.shared_embedding(tokens)
    x = layers.with_sharding_constraint(x, _RESIDUAL)
    x = drop(x, deterministic=deterministic)
    table = layers.RelativePositionTable(cfg.num_heads, cfg.relative_attention_num_buckets,
                                         name="relpos_bias")()
    pos = _positions(tokens.shape[1], positions)
    seg = _segments(tokens, segment_ids)
    bias = attn_lib.RelativeBias(table, pos, pos, bidirectional=True,
                                 max_distance=cfg.relative_attention_max_distance)
    mask = attn_lib.AttentionMask(seg, seg, causal=False)
    bias, mask = _prepare(cfg, bias, mask)
    layer_cls = _maybe_remat(EncoderLayer, cfg)
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, mask, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="encoder_norm")(x)
    return drop(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Embedding -> N decoder layers -> final norm -> tied logits. Bias table `relpos_bias`."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_input_tokens, decoder_input_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
               *, deterministic=True):
    """Returns float32 logits `[batch, target, vocab]`.

    The decoder inputs are used as given (start id 0 first, provided by the
    data); without segment ids every decoder position is attended causally
    (padding at the end cannot affect earlier positions).
    """
    cfg = self.config
    assert decoder_input_tokens.ndim == 2, decoder_input_tokens.shape
    drop = layers.Dropout(rate=cfg.dropout_rate)
    y = self.shared_embedding(decoder_input_tokens)
    y = layers.with_sharding_constraint(y, _RESIDUAL)
    y = drop(y, deterministic=deterministic)
    table = layers.RelativePositionTable(cfg.num_heads, cfg.relative_attention_num_buckets,
                                         name="relpos_bias")()
    pos = _positions(decoder_input_tokens.shape[1], decoder_positions)
    dec_seg = (jnp.ones_like(decoder_input_tokens, jnp.int32) if decoder_segment_ids is None
               else decoder_segment_ids.astype(jnp.int32))
    enc_seg = _segments(encoder_input_tokens, encoder_segment_ids)
    self_bias = attn_lib.RelativeBias(table, pos, pos, bidirectional=False,
                                      max_distance=cfg.relative_attention_max_distance)
    self_bias, self_mask = _prepare(cfg, self_bias, attn_lib.AttentionMask(dec_seg, dec_seg,
                                                                           causal=True))
    _, cross_mask = _prepare(cfg, None, attn_lib.AttentionMask(dec_seg, enc_seg))
    layer_cls = _maybe_remat(DecoderLayer, cfg)
    for i in range(cfg.num_decoder_layers):
      y = layer_cls(cfg, name=f"layers_{i}")(y, encoded, self_bias, self_mask, cross_mask,
                                             deterministic)
    y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="decoder_norm")(y)
    y = drop(y, deterministic=deterministic)
    # Tied softmax: scale by d_model**-0.5 first (Mesh-TF / HF T5), logits in float32.
    y = jnp.asarray(y, jnp.float32) * (cfg.d_model ** -0.5)
    logits = self.shared_embedding.attend(y)
    return layers.with_sharding_constraint(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))


def _check_packing(a, b, names):
  if (a is None) != (b is None):
    raise ValueError(f"give both {names[0]} and {names[1]} (packed inputs) or neither")


class T5(nn.Module):
  """ProtT5 encoder-decoder. Params: `token_embedder`, `encoder`, `decoder`."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, cfg.compute_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, *,
             deterministic=True):
    """`[batch, input]` -> `[batch, input, d_model]` (compute dtype)."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                        deterministic=deterministic)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None, *,
             deterministic=True):
    """Encoder output `[batch, input, d_model]` -> logits `[batch, target, vocab]` float32."""
    _check_packing(encoder_segment_ids, decoder_segment_ids,
                   ("encoder_segment_ids", "decoder_segment_ids"))
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        encoder_segment_ids, decoder_segment_ids, decoder_positions,
                        deterministic=deterministic)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, *,
               deterministic=True):
    """Teacher-forced logits `[batch, target, vocab]` float32."""
    _check_packing(encoder_segment_ids, decoder_segment_ids,
                   ("encoder_segment_ids", "decoder_segment_ids"))
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          deterministic=deterministic)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       encoder_segment_ids, decoder_segment_ids, decoder_positions,
                       deterministic=deterministic)


class T5Encoder(nn.Module):
  """Encoder-only ProtT5 (embeddings); loads the `token_embedder` + `encoder` subtrees."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, cfg.compute_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)

  def __call__(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, *,
               deterministic=True):
    """`[batch, length]` int (0 = padding) -> `[batch, length, d_model]`."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                        deterministic=deterministic)


def encoder_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The `token_embedder` + `encoder` subtrees of full T5 params (for T5Encoder)."""
  missing = [k for k in ("token_embedder", "encoder") if k not in params]
  if missing:
    raise InputError(f"params have no {' / '.join(missing)} subtree (not a ProtT5 tree?)")
  return {"token_embedder": params["token_embedder"], "encoder": params["encoder"]}


def to_half_precision(params, dtype=jnp.bfloat16):
  """Casts float parameters to `dtype` for inference, keeping norm scales float32.

  Use with a config whose `dtype` is the same half type; RMS norms compute in
  float32 regardless.
  """
  def cast(path, x):
    name = getattr(path[-1], "key", None)
    if name == "scale" or not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
      return x
    return jnp.asarray(x, dtype)
  return jax.tree_util.tree_map_with_path(cast, params)


# ----------------------------------------------------------------------------- counting

def param_count(config: T5Config) -> tuple[int, int]:
  """(total, encoder incl. the shared embedding) parameter counts, from abstract shapes."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(
      lambda rng, t: T5(config).init(rng, t, t, deterministic=True)["params"],
      jax.random.PRNGKey(0), tokens)
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  return size(params), size(encoder_params(params))


def encoder_flops(config: T5Config, length: int) -> float:
  """Forward FLOPs of the encoder for one sequence of `length` tokens: 2 per
  multiply-add of every weight a token goes through (q, k, v, o, wi, wo), and
  the attention score and value products (full `q x k`)."""
  c = config
  weights = 4 * c.d_model * c.num_heads * c.d_kv + 2 * c.d_model * c.d_ff
  return float(c.num_encoder_layers * (2 * weights * length
                                       + 4 * length * length * c.num_heads * c.d_kv))


def flops_per_token(config: T5Config, input_length: int, target_length: int) -> float:
  """Training FLOPs per decoder target position (forward + backward = 3x forward).

  Counts matmuls only: 2 FLOPs per multiply-add for every weight a token goes
  through (the "6N" rule applied to the encoder with `input_length` tokens and
  the decoder with `target_length`, plus the tied softmax), and the attention
  score and value products (full `q x k`, no causal halving, as t5x/MaxText
  count them). Divide the per-example total by `target_length`, so
  `tokens/s` must count `batch * target_length` positions per step.
  """
  c = config
  attn_w = 4 * c.d_model * c.num_heads * c.d_kv
  mlp_w = 2 * c.d_model * c.d_ff
  hd = c.num_heads * c.d_kv
  enc = encoder_flops(c, input_length)
  dec = c.num_decoder_layers * (
      2 * (2 * attn_w + mlp_w) * target_length
      + 4 * target_length * target_length * hd + 4 * target_length * input_length * hd)
  logits = 2 * c.d_model * c.vocab_size * target_length
  return 3.0 * (enc + dec + logits) / target_length


# ----------------------------------------------------------------------------- Model wrapper

def _loss_and_metrics(logits, batch, z_loss: float = Z_LOSS):
  """Token-weighted cross-entropy + z-loss, and scalar metrics.

  Args:
    logits: `[batch, target, vocab]` float32.
    batch: with `decoder_target_tokens`, optional `decoder_loss_weights`
      (default: targets > 0) and `encoder_input_tokens` (for the masked-residue
      accuracy; positions are aligned in ProtT5's full reconstruction).
  """
  targets = batch["decoder_target_tokens"]
  weights = batch.get("decoder_loss_weights")
  weights = (targets > 0) if weights is None else weights
  weights = jnp.asarray(weights, jnp.float32)
  logits = jnp.asarray(logits, jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), -1)[..., 0]
  ce = log_z - target_logit
  zl = z_loss * jnp.square(log_z)
  num = jnp.sum(weights)
  denom = jnp.maximum(num, 1.0)
  cross_entropy = jnp.sum(ce * weights) / denom
  z = jnp.sum(zl * weights) / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  enc = batch["encoder_input_tokens"]
  t = targets.shape[1]
  masked = (enc[:, :t] == MASK_ID).astype(jnp.float32)
  if masked.shape[1] < t:  # shorter inputs: no masked positions beyond them
    masked = jnp.pad(masked, ((0, 0), (0, t - masked.shape[1])))
  mw = masked * weights
  metrics = {
      "loss": cross_entropy + z,
      "cross_entropy": cross_entropy,
      "z_loss": z,
      "accuracy": jnp.sum(correct * weights) / denom,
      "masked_residue_accuracy": jnp.sum(correct * mw) / jnp.maximum(jnp.sum(mw), 1.0),
      "num_tokens": num,
  }
  return cross_entropy + z, metrics


class EncoderDecoderModel:
  """t5x-style Model: owns the module and the loss; no optimizer.

  Attributes:
    config: the T5Config.
    module: the `T5` linen module.
  """

  def __init__(self, config: T5Config):
    self.config = config
    self.module = T5(config)

  def init_variables(self, rng, batch_size: int, input_length: int, target_length: int):
    """`{'params': ..., 'params_axes': ...}`; works under `jax.eval_shape`."""
    enc = jnp.ones((batch_size, input_length), jnp.int32)
    dec = jnp.ones((batch_size, target_length), jnp.int32)
    variables = self.module.init({"params": rng}, enc, dec, deterministic=True)
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  def apply(self, params, batch, dropout_rng=None):
    """Logits `[batch, target, vocab]` for a seqio encoder-decoder batch."""
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch.get("encoder_segment_ids"), batch.get("decoder_segment_ids"),
        batch.get("encoder_positions"), batch.get("decoder_positions"),
        deterministic=dropout_rng is None, rngs=rngs)

  def loss_fn(self, params, batch, dropout_rng):
    """(loss, metrics); `dropout_rng=None` means deterministic (no dropout)."""
    logits = self.apply(params, batch, dropout_rng)
    return _loss_and_metrics(logits, batch)

  def flops_per_token(self, input_length: int, target_length: int) -> float:
    return flops_per_token(self.config, input_length, target_length)
