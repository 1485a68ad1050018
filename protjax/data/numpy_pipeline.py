"""The pretraining pipeline in NumPy alone, for machines without TensorFlow.

`DataConfig.backend = 'numpy'` selects it; it yields what the seqio backend
(`protjax.data.pipeline`) yields for a `*_t5`, `*_bert` or `*_electra` task:
the same features, dtypes and shapes, the same train/validation split (crc32
of the id), the same framing (`residues </s>`; `[CLS] residues [SEP]`), the
same crop rule (one uniform window per long protein), the same masking rules
(ProtT5: each residue -> `<extra_id_0>` with probability `mask_rate`; BERT:
residues selected with probability `mask_rate`, of those 80% -> `[MASK]`,
10% a random standard residue, 10% kept, loss weights 1 exactly at the
selected ones; never a special token or padding) and the same determinism
contract (the batch at step s depends only on (seed, shard, s), so resuming
at step k yields batches k, k+1, ...). The random draws themselves differ
from tf.random's.

What it gives up: the corpus is read into memory (fine for the sample and for
small corpora, not for UniRef), no packing, and a full random permutation per
epoch instead of a shuffle buffer.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from protjax.data.objectives import (CONVERTERS, OBJECTIVE_NAMES, STANDARD_RESIDUES, Objective,
                                     make_objective)
from protjax.data.readers import is_validation, read_fasta, resolve_files
from protjax.errors import InputError
from protjax.vocab import ResidueVocabulary

_PURPOSE_ORDER, _PURPOSE_CROP, _PURPOSE_MASK = 0, 1, 2


def load_split(files: Sequence[str], split: str, fraction: float,
               shard_index: int = 0, num_shards: int = 1) -> list[str]:
  """Sequences of `split` in file order; this host keeps records i, i+n, ...

  Duplicate ids within a file are an InputError, as in the sample corpus.
  """
  if split not in ("train", "validation"):
    raise InputError(f"unknown split {split!r}; expected ('train', 'validation')")
  want_validation = split == "validation"
  seqs = []
  i = 0
  for path in files:
    for rid, seq in read_fasta(path, check_duplicates=True):
      if is_validation(rid, fraction) == want_validation:
        if i % num_shards == shard_index:
          seqs.append(seq)
        i += 1
  return seqs


def check_batch_shape(sequence_length: Any, batch_size: int, shortest: int) -> None:
  """InputError unless `sequence_length` is an int >= `shortest` and
  `batch_size` is positive (the NumPy and stream pipelines' rows)."""
  if not isinstance(sequence_length, int) or sequence_length < shortest:
    raise InputError(f"sequence_length must be an int >= {shortest}, got {sequence_length!r}")
  if batch_size < 1:
    raise InputError(f"batch_size must be positive, got {batch_size}")


def _rng(seed: int, shard: int, step: int, purpose: int) -> np.random.Generator:
  return np.random.default_rng([seed, shard, step, purpose])


def record_order(n: int, seed: int, shard: int, shuffle: bool, repeat: bool) -> Iterator[int]:
  """Record indices, epoch after epoch (a fresh permutation each epoch)."""
  epochs = itertools.count() if repeat else range(1)
  for epoch in epochs:
    yield from (_rng(seed, shard, epoch, _PURPOSE_ORDER).permutation(n) if shuffle
                else range(n))


def encode_batch(seqs: Sequence[str], length: int, objective: Objective,
                 rng: np.random.Generator) -> np.ndarray:
  """Random windows of the residues that fit, framed as the objective frames
  them and 0-padded: int32 `[b, length]`."""
  tokens = np.zeros((len(seqs), length), np.int32)
  vocab = objective.vocabulary
  prefix, suffix = list(objective.prefix_ids), list(objective.suffix_ids)
  max_res = objective.max_residues(length)
  starts = rng.random(len(seqs))
  for row, seq in enumerate(seqs):
    slack = max(len(seq) - max_res, 0)
    start = min(int(starts[row] * (slack + 1)), slack)
    ids = prefix + list(vocab.encode(seq[start:start + max_res])) + suffix
    tokens[row, :len(ids)] = ids
  return tokens


def _bert_replace(tokens: np.ndarray, selected: np.ndarray, vocab: ResidueVocabulary,
                  rng: np.random.Generator) -> np.ndarray:
  """BERT's 80/10/10: selected ids -> `[MASK]`, a random standard residue, or kept."""
  how = rng.random(tokens.shape)
  standard = np.asarray(vocab.encode(STANDARD_RESIDUES), np.int32)
  random_ids = standard[rng.integers(0, len(standard), tokens.shape)]
  replaced = np.where(how < 0.8, np.int32(vocab.mask_id),
                      np.where(how < 0.9, random_ids, tokens))
  return np.where(selected, replaced, tokens).astype(np.int32)


def mask_and_convert(tokens: np.ndarray, objective: Objective, rng: np.random.Generator,
                     kind: str) -> dict[str, np.ndarray]:
  """The objective's masking of `[b, l]` ids, then the seqio feature names of `kind`."""
  vocab = objective.vocabulary
  ids = vocab.residue_ids
  residue = (tokens >= ids[0]) & (tokens <= ids[-1])
  selected = (rng.random(tokens.shape) < objective.mask_rate) & residue
  if objective.name == "t5":
    inputs = np.where(selected, np.int32(vocab.mask_id), tokens)
  else:
    inputs = _bert_replace(tokens, selected, vocab, rng)
  if kind == "encdec":
    return {"encoder_input_tokens": inputs,
            "decoder_input_tokens": np.pad(tokens[:, :-1], [(0, 0), (1, 0)]),
            "decoder_target_tokens": tokens,
            "decoder_loss_weights": (tokens != 0).astype(np.int32)}
  return {"encoder_input_tokens": inputs, "encoder_target_tokens": tokens,
          "encoder_loss_weights": selected.astype(np.int32)}


def get_dataset(task_name: str, *, split: str, sequence_length: int, batch_size: int,
                seed: int, start_step: int = 0, shard_info: Optional[Any] = None,
                feature_converter: Optional[str] = None, pack: bool = False,
                repeat: bool = True, shuffle: Optional[bool] = None,
                length_policy: str = "crop", mask_rate: Optional[float] = None,
                map_rare_residues: bool = True,
                source_files: Union[Sequence[str], str, None] = None,
                validation_fraction: float = 0.05,
                shuffle_buffer_size: Optional[int] = None
                ) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches `{feature: int32 [batch_size, sequence_length]}` (see module doc).

  Arguments as `protjax.data.pipeline.get_dataset`; `source_files` is
  required, `shuffle_buffer_size` is ignored (whole-epoch permutations), and
  `pack` and `length_policy="drop"` are InputErrors.
  """
  del shuffle_buffer_size
  corpus, _, objective = task_name.rpartition("_")
  if objective not in OBJECTIVE_NAMES or not corpus:
    raise InputError(f"the numpy data backend runs a '*_t5', '*_bert', '*_electra' or "
                     f"'*_xlnet' task, not {task_name!r}")
  if pack or length_policy != "crop":
    raise InputError("the numpy data backend does not pack or drop; use DataConfig.backend = "
                     "'seqio' for pack=True or length_policy='drop'")
  rule = make_objective(objective, mask_rate, map_rare_residues=map_rare_residues)
  kind = feature_converter or rule.converter
  if kind not in CONVERTERS:
    raise InputError(f"unknown feature converter {kind!r}; expected {CONVERTERS}")
  check_batch_shape(sequence_length, batch_size, rule.num_special + 1)  # a residue, its framing
  if not source_files:
    raise InputError(f"the numpy data backend needs DataConfig.source_files (task {task_name!r})")
  if isinstance(source_files, str):
    source_files = [source_files]
  files = resolve_files(source_files, corpus)
  shard, shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
  seqs = load_split(files, split, validation_fraction, shard, shards)
  what = f"task {task_name!r} split {split!r} with batch_size {batch_size}"
  if len(seqs) < batch_size and not (repeat and seqs):
    raise InputError(f"{what} gives not a single complete batch ({len(seqs)} records)")
  shuffle = (split == "train") if shuffle is None else shuffle
  order = record_order(len(seqs), seed, shard, shuffle, repeat)
  # Skip whole batches of record indices (no tokenising) to reach start_step.
  order = itertools.islice(order, start_step * batch_size, None)
  for step in itertools.count(start_step):
    rows = list(itertools.islice(order, batch_size))
    if len(rows) < batch_size:
      return
    tokens = encode_batch([seqs[i] for i in rows], sequence_length, rule,
                          _rng(seed, shard, step, _PURPOSE_CROP))
    yield mask_and_convert(tokens, rule, _rng(seed, shard, step, _PURPOSE_MASK), kind)
