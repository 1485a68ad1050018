"""Flax probes on frozen embeddings (ProtTrans paper, Section 2.5).

Per-residue probes map `[batch, length, embed]` to two heads, `dssp3`
`[batch, length, 3]` and `dssp8` `[batch, length, 8]`, trained together
(losses summed):
  * `cnn` (the paper's probe): conv to 32 channels, window 7, ReLU, dropout
    0.25, then one conv head (window 7) per task;
  * `logreg`: one linear layer per residue and task;
  * `fnn`: dense 32, ReLU, dropout, linear heads (two layers);
  * `bilstm`: LSTM of 16 per direction, concatenated to 32, then the `fnn`.

The per-protein probe (`ProteinFNN`) maps pooled embeddings `[batch, features]`
to `location` `[batch, 10]` and `membrane` `[batch, 2]` via one dense layer of
32 (ReLU, dropout 0.25).

Padding: per-residue inputs come with `mask` `[batch, length]` (1 = residue).
Padded positions are zeroed on input and after the first layer, so a protein's
output does not depend on how much padding its batch has (convolutions see zeros
beyond the chain ends, as with per-protein 'same' padding).

The embeddings are inputs, never parameters: no gradient reaches the language
model.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

RESIDUE_HEADS = (("dssp3", 3), ("dssp8", 8))
PROTEIN_HEADS = (("location", 10), ("membrane", 2))
HIDDEN = 32
DROPOUT = 0.25


def _masked(x, mask):
  """Zeros padded positions: `[b, l, f] * [b, l] -> [b, l, f]`."""
  return x * mask[..., None].astype(x.dtype)


class ResidueCNN(nn.Module):
  """Conv(32, window 7) -> ReLU -> dropout -> Conv heads (window 7)."""
  hidden: int = HIDDEN
  window: int = 7
  dropout: float = DROPOUT

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool = True) -> dict:
    assert x.ndim == 3, x.shape  # [b, l, e]
    h = nn.Conv(self.hidden, (self.window,), padding="SAME", name="conv")(_masked(x, mask))
    h = nn.Dropout(self.dropout)(nn.relu(h), deterministic=deterministic)
    h = _masked(h, mask)  # the heads must see zeros past the chain ends
    return {name: nn.Conv(n, (self.window,), padding="SAME", name=name)(h)
            for name, n in RESIDUE_HEADS}


class ResidueLogReg(nn.Module):
  """One linear map per residue and task."""

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool = True) -> dict:
    assert x.ndim == 3, x.shape
    x = _masked(x, mask)
    return {name: nn.Dense(n, name=name)(x) for name, n in RESIDUE_HEADS}


class ResidueFNN(nn.Module):
  """Dense(32) -> ReLU -> dropout -> linear heads, per residue."""
  hidden: int = HIDDEN
  dropout: float = DROPOUT

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool = True) -> dict:
    assert x.ndim == 3, x.shape
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(_masked(x, mask)))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return {name: nn.Dense(n, name=name)(h) for name, n in RESIDUE_HEADS}


class ResidueBiLSTM(nn.Module):
  """BiLSTM (16 per direction, concatenated to 32) -> the two-layer FNN."""
  lstm: int = 16
  hidden: int = HIDDEN
  dropout: float = DROPOUT

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool = True) -> dict:
    assert x.ndim == 3, x.shape
    lengths = mask.sum(-1).astype(jnp.int32)  # [b]
    rnn = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.lstm), name="forward"),
                           nn.RNN(nn.OptimizedLSTMCell(self.lstm), name="backward"),
                           name="bilstm")
    h = _masked(rnn(_masked(x, mask), seq_lengths=lengths), mask)  # [b, l, 2 * lstm]
    return ResidueFNN(self.hidden, self.dropout, name="fnn")(h, mask,
                                                             deterministic=deterministic)


class ProteinFNN(nn.Module):
  """Pooled embedding `[b, f]` -> Dense(32) -> ReLU -> dropout -> two heads."""
  hidden: int = HIDDEN
  dropout: float = DROPOUT

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True) -> dict:
    assert x.ndim == 2, x.shape  # [b, f]
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return {name: nn.Dense(n, name=name)(h) for name, n in PROTEIN_HEADS}


RESIDUE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn": ResidueCNN,
    "logreg": ResidueLogReg,
    "fnn": ResidueFNN,
    "bilstm": ResidueBiLSTM,
}
PROTEIN_MODELS: dict[str, Callable[[], nn.Module]] = {"fnn": ProteinFNN}
