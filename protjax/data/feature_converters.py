"""Batched feature converters: objective outputs -> the model's seqio features.

seqio's own converters work one example at a time and its
`EncoderFeatureConverter` weights the loss where the input equals `[MASK]`,
which misses BERT's 10% random / 10% kept positions. These work on whole
`[batch, length]` batches (one op per feature, no per-example work) and take
the loss weights the objective computed.

Feature names (seqio's standard names), all int32 `[batch, length]`:
- "encdec": encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights (+ encoder/decoder_segment_ids, encoder/decoder_positions
  when packed).
- "encoder": encoder_input_tokens, encoder_target_tokens, encoder_loss_weights
  (+ encoder_segment_ids, encoder_positions when packed).
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from protjax.data.objectives import CONVERTERS  # noqa: F401  (re-exported)


def shift_right(targets: tf.Tensor, positions: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Teacher-forcing decoder inputs: `[b, l]` targets shifted right, start id 0.

  With packing, every protein starts again from 0 (`positions == 0`), so the
  first decoder input of a protein never sees the previous protein's last id.
  """
  shifted = tf.pad(targets[:, :-1], [[0, 0], [1, 0]])
  if positions is not None:
    shifted = tf.where(positions == 0, tf.zeros_like(shifted), shifted)
  return shifted


def convert(features: dict[str, tf.Tensor], kind: str,
            segment_ids: Optional[tf.Tensor] = None,
            positions: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
  """Objective outputs {inputs, targets, loss_weights} `[b, l]` -> model features.

  Args:
    features: from `Objective.mask`.
    kind: "encdec" (ProtT5) or "encoder" (ProtBert / ProtAlbert / ELECTRA).
    segment_ids, positions: `[b, l]` from packing, or None when unpacked.
  """
  inputs = tf.cast(features["inputs"], tf.int32)
  targets = tf.cast(features["targets"], tf.int32)
  if kind == "encdec":
    out = {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": shift_right(targets, positions),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": tf.cast(targets != 0, tf.int32),
    }
    if segment_ids is not None:
      out.update(encoder_segment_ids=segment_ids, decoder_segment_ids=segment_ids,
                 encoder_positions=positions, decoder_positions=positions)
    return out
  if kind == "encoder":
    out = {
        "encoder_input_tokens": inputs,
        "encoder_target_tokens": targets,
        "encoder_loss_weights": tf.cast(features["loss_weights"], tf.int32),
    }
    if segment_ids is not None:
      out.update(encoder_segment_ids=segment_ids, encoder_positions=positions)
    return out
  raise ValueError(f"unknown feature converter {kind!r}; expected one of {CONVERTERS}")
