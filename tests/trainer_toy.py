"""A toy masked-LM family and data source for the trainer's tests.

Small enough to train in milliseconds, but annotated like the real models
(every parameter through `param_with_axes`, activations constrained with the
logical names of `protjax.axes`), so partitioning, optimiser-state sharding,
checkpoint resharding and the shared train step are exercised exactly as for
ProtT5.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning

from protjax import axes



VOCAB = 32
MASK_ID = 31
param_with_axes = nn_partitioning.param_with_axes
constrain = nn_partitioning.with_sharding_constraint


class ToyEncoder(nn.Module):
  """Embedding -> one attention-like mixing block -> MLP -> tied logits."""
  embed: int = 16
  mlp: int = 32
  heads: int = 4
  kv: int = 8
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, tokens, *, deterministic=True):
    """tokens `[batch, length]` -> logits `[batch, length, vocab]`."""
    init = nn.initializers.normal(0.5)
    emb = param_with_axes("embedding", init, (VOCAB, self.embed),
                          axes=(axes.VOCAB, axes.EMBED))
    scale = param_with_axes("scale", nn.initializers.ones, (self.embed,),
                            axes=(axes.EMBED,))
    q = param_with_axes("query", init, (self.embed, self.heads, self.kv),
                        axes=(axes.EMBED, axes.HEADS, axes.KV))
    out = param_with_axes("out", init, (self.heads, self.kv, self.embed),
                          axes=(axes.HEADS, axes.KV, axes.EMBED))
    wi = param_with_axes("wi", init, (self.embed, self.mlp),
                         axes=(axes.EMBED, axes.MLP))
    wo = param_with_axes("wo", init, (self.mlp, self.embed),
                         axes=(axes.MLP, axes.EMBED))
    x = emb[tokens]  # [b, l, e]
    x = constrain(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
    h = jnp.einsum("ble,ehk->blhk", x, q)
    h = constrain(h, (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, axes.ACT_KV))
    # Mean over the length: a cheap stand-in for attention mixing positions.
    mixed = jnp.tanh(h.mean(axis=1, keepdims=True) + h)
    x = x + jnp.einsum("blhk,hke->ble", mixed, out)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale
    m = nn.relu(x @ wi)
    m = constrain(m, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    m = nn.Dropout(self.dropout_rate)(m, deterministic=deterministic)
    x = x + m @ wo
    logits = x @ emb.T
    return constrain(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))


class ToyModel:
  """The trainer's Model interface for ToyEncoder (an encoder-only MLM)."""

  def __init__(self, **module_kwargs):
    self.module = ToyEncoder(**module_kwargs)
    self.config = None

  def init_variables(self, rng, batch_shapes):
    tokens = jnp.zeros((1, batch_shapes["encoder_input_tokens"][1]), jnp.int32)
    return self.module.init(rng, tokens)

  def loss_fn(self, params, batch, dropout_rng):
    logits = self.module.apply(
        {"params": params}, batch["encoder_input_tokens"],
        deterministic=dropout_rng is None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    targets = batch["encoder_target_tokens"]
    weights = batch["encoder_loss_weights"].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    num = weights.sum()
    loss = (nll * weights).sum() / num
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    masked = (batch["encoder_input_tokens"] == MASK_ID) * weights
    metrics = {
        "loss": loss,
        "accuracy": (correct * weights).sum() / num,
        "masked_residue_accuracy":
            (correct * masked).sum() / jnp.maximum(masked.sum(), 1.0),
        "num_tokens": num,
    }
    return loss, metrics

  def flops_per_example(self, batch_shapes):
    return 6.0 * 3000 * batch_shapes["encoder_input_tokens"][1]

  def tokens_per_example(self, batch_shapes):
    return batch_shapes["encoder_input_tokens"][1]


class ToyData:
  """Deterministic synthetic MLM batches: step s depends only on (seed, s).

  Residues follow a skewed unigram distribution (so the loss can fall); 15%
  are replaced by MASK_ID in the input; the target is the original sequence;
  rows may end in padding (id 0, weight 0).
  """

  def __init__(self, batch_size=16, length=12, seed=0):
    self.batch_size, self.length, self.seed = batch_size, length, seed
    p = np.arange(1, VOCAB - 1, dtype=np.float64) ** -1.5
    self.probs = p / p.sum()

  def batch(self, step):
    rng = np.random.default_rng([self.seed, step])
    b, l = self.batch_size, self.length
    targets = rng.choice(np.arange(1, VOCAB - 1), size=(b, l), p=self.probs)
    lengths = rng.integers(l // 2, l + 1, size=b)
    valid = np.arange(l)[None, :] < lengths[:, None]
    targets = np.where(valid, targets, 0).astype(np.int32)
    masked = (rng.random((b, l)) < 0.15) & valid
    inputs = np.where(masked, MASK_ID, targets).astype(np.int32)
    return {"encoder_input_tokens": inputs, "encoder_target_tokens": targets,
            "encoder_loss_weights": valid.astype(np.int32)}

  def __call__(self, start_step, shard_index, num_shards):
    assert self.batch_size % num_shards == 0
    per = self.batch_size // num_shards
    step = start_step
    while True:
      full = self.batch(step)
      yield {k: v[shard_index * per:(shard_index + 1) * per]
             for k, v in full.items()}
      step += 1
