"""Small helpers shared by the parity tests (imported as `helpers`, like `trainer_toy`)."""
import numpy as np


def rel_error(a, b) -> float:
  """||a - b|| / ||b|| in float64: the relative error the parity tests bound."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def pad_rows(rows) -> np.ndarray:
  """Id lists right-padded with 0: `[len(rows), longest]` int32."""
  out = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def bert_tokens(sequences) -> np.ndarray:
  """`[CLS] residues [SEP]` in ProtBert's vocabulary, padded with [PAD]=0:
  `[batch, max_len + 2]` int32."""
  from protjax.vocab import ProtBertVocabulary
  vocab = ProtBertVocabulary()
  return pad_rows([[vocab.cls_id, *vocab.encode(s), vocab.eos_id] for s in sequences])


def t5_tokens(sequences, vocab=None) -> np.ndarray:
  """`residues </s>` in ProtT5's (or `vocab`'s) ids, padded with 0:
  `[batch, max_len + 1]` int32."""
  from protjax.vocab import ProtT5Vocabulary
  vocab = vocab or ProtT5Vocabulary()
  return pad_rows([[*vocab.encode(s), vocab.eos_id] for s in sequences])


def batch_shapes(family, batch: int = 1, length: int = 8) -> dict:
  """Shapes of the features a registered family's objective feeds its model
  (enough to build its variables)."""
  if family.full_kind == "encoder_decoder":
    return {"encoder_input_tokens": (batch, length), "decoder_target_tokens": (batch, length)}
  if family.full_kind == "lm":  # ProtTXL's stream
    return {"decoder_input_tokens": (batch, length)}
  return {"encoder_input_tokens": (batch, length)}


def adam_fit(loss_fn, params, next_batch, steps: int, learning_rate: float = 1e-2):
  """`steps` jitted Adam updates of `loss_fn(params, batch, step) -> (loss, metrics)`,
  each on a fresh `next_batch()`; returns the params. For the short runs that
  show an objective can learn what its inputs let it see."""
  import jax
  import optax
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def update(params, opt_state, batch, step):
    grads, _ = jax.grad(loss_fn, has_aux=True)(params, batch, step)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for step in range(steps):
    params, opt_state = update(params, opt_state, next_batch(), step)
  return params
