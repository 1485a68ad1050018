"""Vectorised, stateless TensorFlow preprocessing for protein pretraining.

Every function here works on a whole batch at once (`[batch]` strings or
`[batch, length]` ids; a single example is a batch of one) and draws its
randomness from `tf.random.stateless_*` with an explicit seed, so an example
depends only on the seed it is given, never on thread timing or on how many
examples came before. The pipeline derives that seed from
(user seed, host shard, global step, purpose) with `step_seed`.

Objectives (REFERENCE.md):
- `t5_denoise`: ProtT5. Each residue masked independently with probability
  0.15; every masked residue replaced by `<extra_id_0>` (127); the target is
  the full original sequence (inputs and targets aligned, same length).
- `bert_mask`: ProtBert / ProtAlbert. 15% of residues selected; of those 80%
  become `[MASK]`, 10% a random standard residue, 10% stay; loss weights are 1
  exactly at the selected positions. ELECTRA's generator uses the same with
  25% selection (`OBJECTIVES["electra"]`).
- "xlnet": ProtXLNet. Framed as XLNet (`residues [SEP] [CLS]`) and left
  unmasked (mask rate 0: inputs = targets, no loss weights): its permutation
  language model draws the factorisation order, targets and masks on the
  device from the step's rng (`protjax.models.xlnet.permutation_targets`).
Special tokens (`</s>`, `[CLS]`, `[SEP]`) and padding are never masked.
"""
from __future__ import annotations

import tensorflow as tf

# The objectives themselves are TensorFlow-free (the prepared and NumPy
# pipelines use them without TensorFlow); re-exported here, where they began.
from protjax.data.objectives import (OBJECTIVE_NAMES, STANDARD_RESIDUES, Objective,  # noqa: F401
                                     make_objective, single_length)
from protjax.vocab import ResidueVocabulary

# Distinct purposes fold different constants into the step seed, so crop and
# mask draws of the same step are independent.
PURPOSE_CROP = 1
PURPOSE_MASK = 2
PURPOSE_REPLACE = 3


# --- seeds -------------------------------------------------------------------

def step_seed(seed: int, shard_index: int, step, purpose: int) -> tf.Tensor:
  """Stateless seed `[2]` for (user seed, host shard, global step, purpose)."""
  s = tf.constant([seed, shard_index], tf.int64)
  s = tf.random.experimental.stateless_fold_in(s, tf.cast(step, tf.int64))
  return tf.random.experimental.stateless_fold_in(s, purpose)


# --- length handling -----------------------------------------------------------

def keep_if_fits(sequence: tf.Tensor, max_residues: int) -> tf.Tensor:
  """Predicate for the "drop" length policy: scalar bool."""
  return tf.strings.length(sequence) <= max_residues


def random_crop(sequences: tf.Tensor, max_residues: int, seed: tf.Tensor) -> tf.Tensor:
  """Crops each string of `[batch]` to a random window of `max_residues`.

  Shorter sequences are unchanged; for a sequence of n > max_residues residues
  every start in [0, n - max_residues] is equally likely.
  """
  lengths = tf.strings.length(sequences)  # [b]
  slack = tf.maximum(lengths - max_residues, 0)
  u = tf.random.stateless_uniform(tf.shape(lengths), seed=seed)
  start = tf.minimum(tf.cast(u * tf.cast(slack + 1, tf.float32), tf.int32), slack)
  return tf.strings.substr(sequences, start, tf.fill(tf.shape(lengths), max_residues))


# --- tokenising ----------------------------------------------------------------

def tokenize(sequences: tf.Tensor, objective: Objective) -> tf.RaggedTensor:
  """`[batch]` residue strings -> ragged ids `[batch, (n + specials)]`.

  A byte-table gather (the vocabulary's own table), then the objective's
  prefix/suffix ids.
  """
  table = tf.constant(objective.vocabulary._byte_to_id)  # pylint: disable=protected-access
  codes = tf.strings.unicode_decode(sequences, "UTF-8")
  # Residues are ASCII after the readers' checks; clip keeps the gather in range.
  ids = codes.with_flat_values(tf.gather(table, tf.clip_by_value(codes.flat_values, 0, 255)))
  batch = tf.shape(sequences)[0]
  parts = []
  if objective.prefix_ids:
    parts.append(tf.RaggedTensor.from_tensor(
        tf.tile(tf.constant([objective.prefix_ids], tf.int32), [batch, 1])))
  parts.append(ids)
  if objective.suffix_ids:
    parts.append(tf.RaggedTensor.from_tensor(
        tf.tile(tf.constant([objective.suffix_ids], tf.int32), [batch, 1])))
  return tf.concat(parts, axis=1) if len(parts) > 1 else ids


def pad_to(ragged: tf.RaggedTensor, length: int) -> tf.Tensor:
  """Ragged `[batch, (n)]` with n <= length -> dense `[batch, length]`, 0-padded."""
  return ragged.to_tensor(default_value=0, shape=[None, length])


# --- objectives --------------------------------------------------------------

def residue_positions(tokens: tf.Tensor, vocabulary: ResidueVocabulary) -> tf.Tensor:
  """Bool, True where `tokens` holds a residue (not a special, sentinel or pad)."""
  ids = vocabulary.residue_ids
  return (tokens >= int(ids[0])) & (tokens <= int(ids[-1]))


def t5_denoise(tokens: tf.Tensor, seed: tf.Tensor, vocabulary: ResidueVocabulary,
               rate: float = 0.15) -> dict[str, tf.Tensor]:
  """ProtT5 masking of `[batch, length]` ids (residues + `</s>`, 0-padded).

  Returns:
    inputs: tokens with every selected residue replaced by `<extra_id_0>`.
    targets: tokens unchanged (the decoder reconstructs the full sequence).
    loss_weights: 1 at the masked positions (for encoder-only use / metrics).
  """
  u = tf.random.stateless_uniform(tf.shape(tokens), seed=seed)
  selected = (u < rate) & residue_positions(tokens, vocabulary)
  mask_id = vocabulary.vocab_size - 1  # <extra_id_0>
  inputs = tf.where(selected, tf.constant(mask_id, tokens.dtype), tokens)
  return {"inputs": inputs, "targets": tokens,
          "loss_weights": tf.cast(selected, tf.int32)}


def bert_mask(tokens: tf.Tensor, seed: tf.Tensor, vocabulary: ResidueVocabulary,
              rate: float = 0.15, replace_with_mask: float = 0.8,
              replace_with_random: float = 0.1) -> dict[str, tf.Tensor]:
  """BERT-style masking of `[batch, length]` ids (`[CLS] residues [SEP]`, 0-padded).

  Of the selected residues, `replace_with_mask` become `[MASK]`,
  `replace_with_random` a uniformly drawn standard residue, the rest unchanged.

  Returns:
    inputs, targets (= tokens), loss_weights (1 exactly at selected positions).
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  shape = tf.shape(tokens)
  selected = ((tf.random.stateless_uniform(shape, seed=seeds[0]) < rate)
              & residue_positions(tokens, vocabulary))
  how = tf.random.stateless_uniform(shape, seed=seeds[1])
  # Plain Python (protjax.vocab subclasses no seqio class, so autograph would
  # try to convert the method and fail on its properties).
  encode = tf.autograph.experimental.do_not_convert(vocabulary.encode)
  standard = tf.constant(encode(STANDARD_RESIDUES), tf.int32)
  pick = tf.random.stateless_uniform(shape, seed=seeds[2], minval=0,
                                     maxval=len(STANDARD_RESIDUES), dtype=tf.int32)
  random_ids = tf.cast(tf.gather(standard, pick), tokens.dtype)
  mask_id = tf.constant(vocabulary.mask_id, tokens.dtype)
  replaced = tf.where(how < replace_with_mask, mask_id,
                      tf.where(how < replace_with_mask + replace_with_random, random_ids,
                               tokens))
  inputs = tf.where(selected, replaced, tokens)
  return {"inputs": inputs, "targets": tokens, "loss_weights": tf.cast(selected, tf.int32)}


# --- packing -------------------------------------------------------------------

def pack_dataset(ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
  """Packs a dataset of 1-D id tensors `{"targets": [n]}` (n <= length) into rows.

  Uses seqio's deterministic greedy packer: output `{"targets", "targets_segment_ids",
  "targets_positions"}`, each `[length]`; segment ids are 1, 2, ... per protein
  within a row (0 = padding), positions restart at 0 for every protein, so a
  protein never shares a segment id with another one in its row.
  """
  import seqio  # local: only the packing path needs seqio's utils
  return seqio.utils.trim_and_pack_dataset(ds, {"targets": length})
