"""Shared Flax linen building blocks: projections, RMS norm, MLP, embedding.

Every parameter is created with `param_with_axes` and logical names from
`protjax.axes`, so a model is split over a mesh by the partitioning rules
alone. Parameters are always float32; each module casts them to its compute
`dtype` at use (t5x convention), which also lets a caller pass parameters that
are already in half precision (the inference path).
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning

from protjax import axes

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Initializer = Callable[..., jnp.ndarray]
DType = jnp.dtype


COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "auto")


def check_positive_ints(config, names: Sequence[str]) -> None:
  """ValueError naming `<ConfigClass>.<name>` for a size that is not a positive
  integer (a bool is not one)."""
  for name in names:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, "
                       f"got {value!r}")


def check_divisible(config, name: str, by: str) -> None:
  """ValueError '<ConfigClass>.<name> N is not divisible by <by> M' (heads
  split the hidden size evenly)."""
  value, divisor = getattr(config, name), getattr(config, by)
  if value % divisor:
    raise ValueError(f"{type(config).__name__}.{name} {value} is not divisible by "
                     f"{by} {divisor}")


def check_rates(config, names: Sequence[str]) -> None:
  """ValueError naming `<ConfigClass>.<name>` for a dropout rate outside [0, 1)."""
  for name in names:
    value = getattr(config, name)
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{type(config).__name__}.{name} must be in [0, 1), got {value}")


def check_compute_options(dtype: str, attention_impl: str, implementations: Sequence[str]) -> None:
  """ValueError for a config's compute dtype or attention path that does not exist."""
  if attention_impl not in implementations:
    raise ValueError(f"attention_impl must be one of {tuple(implementations)}, "
                     f"got {attention_impl!r}")
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"dtype must be float32/bfloat16/float16/auto, got {dtype!r}")


def resolve_dtype(dtype: str) -> jnp.dtype:
  """A config's compute dtype: "auto" is bfloat16 on accelerators, float32 on CPU."""
  if dtype == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(dtype)


def _normalize_axes(axes_: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  if isinstance(axes_, int):
    axes_ = (axes_,)
  return tuple(a if a >= 0 else a + ndim for a in axes_)


def fan_in_init(scale: float = 1.0, distribution: str = "truncated_normal",
                num_in_axes: int = 1) -> Initializer:
  """Variance-scaling (fan-in) init for a kernel whose first `num_in_axes` are inputs.

  t5x uses `variance_scaling(1.0, 'fan_in', ...)` for every dense kernel; the
  input axes must be named explicitly for multi-axis kernels such as
  `[heads, kv, embed]`, where fan-in is `heads * kv`.
  """
  def init(key, shape, dtype=jnp.float32):
    in_axis = tuple(range(num_in_axes))
    out_axis = tuple(range(num_in_axes, len(shape)))
    return nn.initializers.variance_scaling(
        scale, "fan_in", distribution, in_axis=in_axis, out_axis=out_axis)(key, shape, dtype)
  return init


class DenseGeneral(nn.Module):
  """Linear map contracting the trailing `num_in_axes` input axes, bias optional.

  Kernel shape is `in_shape + features`, e.g. `[embed, heads, kv]` for a query
  projection (`features=(heads, kv)`) or `[heads, kv, embed]` for the output
  projection (`num_in_axes=2`). T5 has no biases; BERT's projections have one
  of shape `features` (initialised to zero).

  Attributes:
    features: output feature shape.
    kernel_axes: logical names of the kernel axes (input axes first).
    num_in_axes: how many trailing input axes are contracted.
    dtype: compute dtype.
    kernel_init: initializer (receives the full kernel shape).
    use_bias: add a bias `[features]` after the product.
    bias_axes: logical names of the bias axes (default: the kernel's output axes).
  """
  features: int | Sequence[int]
  kernel_axes: tuple[str, ...]
  num_in_axes: int = 1
  dtype: DType = jnp.float32
  kernel_init: Initializer | None = None
  use_bias: bool = False
  bias_axes: tuple[str, ...] | None = None

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = inputs.shape[inputs.ndim - self.num_in_axes:]
    kernel_shape = tuple(in_shape) + features
    assert len(self.kernel_axes) == len(kernel_shape), (self.kernel_axes, kernel_shape)
    init = self.kernel_init or fan_in_init(num_in_axes=self.num_in_axes)
    kernel = param_with_axes("kernel", init, kernel_shape, jnp.float32, axes=self.kernel_axes)
    kernel = jnp.asarray(kernel, self.dtype)
    inputs = jnp.asarray(inputs, self.dtype)
    contract_in = tuple(range(inputs.ndim - self.num_in_axes, inputs.ndim))
    contract_k = tuple(range(self.num_in_axes))
    out = jax.lax.dot_general(inputs, kernel, ((contract_in, contract_k), ((), ())))
    if not self.use_bias:
      return out
    bias_axes = self.bias_axes or tuple(self.kernel_axes[self.num_in_axes:])
    assert len(bias_axes) == len(features), (bias_axes, features)
    bias = param_with_axes("bias", nn.initializers.zeros, features, jnp.float32, axes=bias_axes)
    return out + jnp.asarray(bias, self.dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: `x * rsqrt(mean(x^2) + eps) * scale`, no mean, no bias.

  Always computed in float32 (also when `x` and `scale` are half precision),
  then cast to `dtype`. Input/output `[..., embed]`.
  """
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    scale = param_with_axes("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32,
                            axes=(axes.EMBED,))
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(mean2 + self.epsilon) * jnp.asarray(scale, jnp.float32)
    return jnp.asarray(y, self.dtype)


class LayerNorm(nn.Module):
  """BERT layer norm: `(x - mean) * rsqrt(var + eps) * scale + bias` over the last axis.

  Computed in float32 like `RMSNorm` (also for half-precision inputs and
  parameters), then cast to `dtype`. Input/output `[..., features]`.

  Attributes:
    epsilon: added to the (biased) variance, as `torch.nn.LayerNorm`.
    dtype: output dtype.
    axis_name: logical name of the normalised axis (`embed` for the residual
      stream; ALBERT's factorised embedding has a name of its own).
  """
  epsilon: float = 1e-12
  dtype: DType = jnp.float32
  axis_name: str = axes.EMBED

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (x.shape[-1],)
    scale = param_with_axes("scale", nn.initializers.ones, shape, jnp.float32,
                            axes=(self.axis_name,))
    bias = param_with_axes("bias", nn.initializers.zeros, shape, jnp.float32,
                           axes=(self.axis_name,))
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + self.epsilon) * jnp.asarray(scale, jnp.float32)
    return jnp.asarray(y + jnp.asarray(bias, jnp.float32), self.dtype)


def _threefry_words(rng: jax.Array, shape: tuple[int, ...]) -> list[jnp.ndarray] | None:
  """Both 32-bit outputs of threefry2x32 per counter `[shape]`, or None if not threefry.

  `jax.random.bits` XORs the two outputs of each threefry2x32 evaluation into
  one word; keeping both halves the PRNG work per random bit. Counters are
  the flat index of each element (as jax's partitionable threefry does), so
  the draw is elementwise and shards like any elementwise op.
  """
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    impl_name = str(jax.random.key_impl(rng))
    data = jax.random.key_data(rng)
  else:
    impl_name = jax.config.jax_default_prng_impl
    data = rng
  if "threefry" not in impl_name or data.shape != (2,):
    return None
  from jax.extend.random import threefry2x32_p  # pylint: disable=import-outside-toplevel
  data = data.astype(jnp.uint32)
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 1, -1, -1):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  if stride >= 2 ** 32:
    return None  # counters would wrap; use jax.random.bits
  return list(threefry2x32_p.bind(data[0], data[1], jnp.zeros(shape, jnp.uint32), index))


def dropout_keep_mask(rng: jax.Array, rate: float, shape: Sequence[int]) -> jnp.ndarray:
  """Bernoulli(1 - rate) keep mask of `shape` (bool), four elements per threefry call.

  `jax.random.bernoulli` spends a whole threefry2x32 evaluation (64 random
  bits, XORed to 32) per element and converts it to a float. Dropout needs
  far less resolution: each 64-bit threefry output is split into four 16-bit
  integers compared against `round(rate * 2**16)`, a quarter of the PRNG
  work and no float conversion. The drop probability is quantised to 1/65536
  (0.1 -> 0.1000061). The words are drawn for the last axis divided by four
  and interleaved along it, so a sharded array stays shard-local. With a
  non-threefry PRNG, `jax.random.bits` words give two elements each.
  Deterministic in `rng`, like every jax.random draw.
  """
  shape = tuple(shape)
  lead, last = (shape[:-1], shape[-1]) if shape else ((), 1)
  words = _threefry_words(rng, lead + (-(-last // 4),))
  if words is None:
    words = [jax.random.bits(rng, lead + (-(-last // 2),), jnp.uint32)]
  halves = []
  for w in words:
    halves += [w & 0xFFFF, w >> 16]
  per_word = len(halves)
  u16 = jnp.stack(halves, axis=-1)  # [..., words, 2 or 4]
  u16 = u16.reshape(lead + (per_word * u16.shape[-2],))[..., :last]
  threshold = int(round(rate * 65536.0))
  return (u16 >= jnp.uint32(threshold)).reshape(shape)


def dropout(x: jnp.ndarray, rate: float, rng: jax.Array | None) -> jnp.ndarray:
  """Inverted dropout: zero with probability `rate`, scale the rest by 1/(1-rate)."""
  if rng is None or rate <= 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  keep = dropout_keep_mask(rng, rate, x.shape)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """`flax.linen.Dropout` with `dropout_keep_mask` (rng stream 'dropout')."""
  rate: float

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    if deterministic or self.rate <= 0.0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))


class MlpBlock(nn.Module):
  """T5 v1.0 feed-forward: `wo(dropout(relu(wi(x))))`, no gating, no biases.

  Input/output `[batch, length, embed]`; intermediate `[batch, length, mlp]`.
  """
  d_ff: int
  dropout_rate: float = 0.1
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    assert x.ndim == 3, x.shape
    h = DenseGeneral(self.d_ff, kernel_axes=(axes.EMBED, axes.MLP), dtype=self.dtype,
                     name="wi")(x)
    h = nn.relu(h)
    h = with_sharding_constraint(h, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    h = Dropout(rate=self.dropout_rate)(h, deterministic=deterministic)
    out = DenseGeneral(x.shape[-1], kernel_axes=(axes.MLP, axes.EMBED), dtype=self.dtype,
                       name="wo")(h)
    return out


class Embed(nn.Module):
  """Embedding table `[rows, features]`, also usable (tied) as the output softmax.

  T5 initialises its token table normal(std 1.0) as t5x/Mesh-TF do, whose T5
  scales nothing at the input; the output side is scaled by `d_model**-0.5`
  in the decoder. BERT's tables (tokens, positions, token types) use std
  `initializer_range` (0.02) and logical names of their own.

  Attributes:
    num_embeddings, features: table shape.
    dtype: compute dtype of the looked-up rows.
    stddev: standard deviation of the normal initialisation.
    embedding_axes: logical names of the table's two axes.
  """
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  stddev: float = 1.0
  embedding_axes: tuple[str, str] = (axes.VOCAB, axes.EMBED)

  def setup(self):
    self.embedding = param_with_axes(
        "embedding", nn.initializers.normal(stddev=self.stddev),
        (self.num_embeddings, self.features), jnp.float32, axes=self.embedding_axes)

  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    """`[batch, length]` int -> `[batch, length, embed]` in `dtype`."""
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"token ids must be integers, got {ids.dtype}")
    # A gather (not one-hot matmul): cheap, and exact for every dtype.
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, query: jnp.ndarray) -> jnp.ndarray:
    """Logits against the tied table, in float32: `[..., embed] -> [..., vocab]`."""
    table = jnp.asarray(self.embedding, jnp.float32)
    return jnp.einsum("...e,ve->...v", jnp.asarray(query, jnp.float32), table)


class RelativePositionTable(nn.Module):
  """The per-stack relative position bias table `[heads, relpos_buckets]`.

  Only holds the parameter; `protjax.models.attention.RelativeBias` turns it
  into per-(query, key) biases, either materialised or block by block.
  """
  num_heads: int
  num_buckets: int = 32

  @nn.compact
  def __call__(self) -> jnp.ndarray:
    # t5x: variance_scaling(1.0, 'fan_avg', 'uniform').
    return param_with_axes(
        "rel_embedding", nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        (self.num_heads, self.num_buckets), jnp.float32, axes=(axes.HEADS, axes.RELPOS_BUCKETS))


def clamp_half(x: jnp.ndarray) -> jnp.ndarray:
  """Keeps float16 activations finite (as HF T5 does); no-op for other dtypes.

  T5's residual stream can exceed the float16 range in deep models; clamping
  just below the maximum keeps the next RMS norm finite.
  """
  if x.dtype != jnp.float16:
    return x
  limit = float(np.finfo(np.float16).max) - 1000.0
  return jnp.clip(x, -limit, limit)


def maybe_remat(cls, enabled: bool):
  """`cls`, rematerialised when `enabled`; its last call argument stays static.

  Layers take `deterministic` last; it selects code paths, so it must be a
  Python bool under `nn.remat` (which counts `self` as argument 0).
  """
  if not enabled:
    return cls
  num_args = len(inspect.signature(cls.__call__).parameters)
  return nn.remat(cls, static_argnums=(num_args - 1,))
