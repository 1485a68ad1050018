"""ProtTXL's objective: next-residue prediction over one stream of proteins.

As Transformer-XL trained on its corpora (its `LMOrderedIterator`): the
split's proteins, each followed by the end-of-protein token `[SEP]`, are
concatenated into one stream per epoch (a permutation of the proteins drawn
from (seed, shard, epoch); file order when not shuffled), the stream is cut
into `batch_size` rows of equal length, and step s reads the next
`sequence_length` tokens of every row: row r of step s+1 continues exactly
where row r of step s stopped, so the memory the model carries from one step
to the next (`TrainState.model_state`) is the left context of each row.
Inputs are tokens t..t+L-1, targets t+1..t+L (loss weight 1 everywhere: a
stream has no padding); the last token of a row is only ever a target.

Task names: `{corpus}_txl` (corpus as for the other objectives:
protjax_sample, uniref50, uniref100, bfd, FASTA read into memory, split by
crc32 of the id as every pipeline does). Features (int32 `[batch, length]`):
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`.

Determinism: the batch at step s depends only on (seed, shard, s): epoch
e = s // steps_per_epoch is rebuilt from its seed, so resuming at step k
yields batches k, k+1, ... of an uninterrupted run, and with the memory in
the checkpoint the resumed run is bitwise the uninterrupted one. NumPy only
(no TensorFlow), for either `DataConfig.backend`.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from protjax.data.objectives import make_objective
from protjax.errors import InputError

OBJECTIVES = ("txl",)
_PURPOSE_ORDER = 0


def is_stream_task(task_name: str) -> bool:
  """Whether `task_name` is a `{corpus}_txl` task (read by this module)."""
  return task_name.rpartition("_")[2] in OBJECTIVES


def _files(corpus: str, source_files) -> list[str]:
  from protjax.data.readers import resolve_files  # pylint: disable=import-outside-toplevel
  if isinstance(source_files, str):
    source_files = [source_files]
  if not source_files:
    from protjax.data import corpora  # pylint: disable=import-outside-toplevel
    if corpus not in corpora.CORPORA:
      raise InputError(f"unknown corpus {corpus!r} for a stream task; choose one of "
                       f"{corpora.CORPORA}")
    source_files = corpora.source_files(corpus)
  if not source_files:
    raise InputError(f"no FASTA files for corpus {corpus!r}: set DataConfig.source_files or "
                     f"PROTJAX_{corpus.upper()}_FILES")
  return resolve_files(source_files, corpus)


class Stream:
  """One host's stream of one split: rows of each epoch, built on demand.

  Attributes:
    proteins: token ids of each protein, `[SEP]` appended.
    batch_size: rows (this host's).
    length: tokens per step and row.
    steps_per_epoch: segments each row gives in an epoch.
  """

  def __init__(self, proteins: Sequence[np.ndarray], batch_size: int, length: int, seed: int,
               shard: int, shuffle: bool, what: str):
    self.proteins = list(proteins)
    self.batch_size, self.length = batch_size, length
    self.seed, self.shard, self.shuffle = seed, shard, shuffle
    total = int(sum(len(p) for p in self.proteins))
    self.row_length = total // batch_size
    self.steps_per_epoch = (self.row_length - 1) // length if self.row_length else 0
    if self.steps_per_epoch < 1:
      raise InputError(f"{what}: its stream of {total} tokens cut into {batch_size} rows "
                       f"gives no segment of {length} tokens and the next one's target")
    self._epoch, self._rows = None, None

  def rows(self, epoch: int) -> np.ndarray:
    """`[batch, row_length]` int32: epoch `epoch`'s stream cut into rows."""
    if epoch != self._epoch:
      n = len(self.proteins)
      order = (np.random.default_rng([self.seed, self.shard, epoch, _PURPOSE_ORDER]).permutation(n)
               if self.shuffle else np.arange(n))
      stream = np.concatenate([self.proteins[i] for i in order])
      rows = stream[:self.batch_size * self.row_length]
      self._epoch, self._rows = epoch, rows.reshape(self.batch_size, self.row_length)
    return self._rows

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The features of global step `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    rows = self.rows(epoch)
    start = i * self.length
    window = rows[:, start:start + self.length + 1]
    return {"decoder_input_tokens": np.ascontiguousarray(window[:, :-1]),
            "decoder_target_tokens": np.ascontiguousarray(window[:, 1:]),
            "decoder_loss_weights": np.ones((self.batch_size, self.length), np.int32)}


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
  """Batches of a `{corpus}_txl` task (see the module docstring).

  Arguments as `protjax.data.pipeline.get_dataset`; `pack`, a mask rate, a
  feature converter and `length_policy="drop"` do not apply to a stream and
  are InputErrors; `shuffle_buffer_size` is ignored (whole-epoch
  permutations). Without `repeat`, one epoch.
  """
  del shuffle_buffer_size
  from protjax.data.numpy_pipeline import check_batch_shape, load_split  # pylint: disable=import-outside-toplevel
  corpus, _, objective = task_name.rpartition("_")
  if objective not in OBJECTIVES or not corpus:
    raise InputError(f"not a stream task: {task_name!r} (expected '<corpus>_txl')")
  if pack or length_policy != "crop" or mask_rate is not None or feature_converter:
    raise InputError(f"task {task_name!r} reads one stream of proteins: DataConfig.pack, "
                     "length_policy, mask_rate and feature_converter do not apply")
  check_batch_shape(sequence_length, batch_size, 1)
  shard, shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
  seqs = load_split(_files(corpus, source_files), split, validation_fraction, shard, shards)
  rule = make_objective(objective, map_rare_residues=map_rare_residues)
  proteins = [np.asarray(list(rule.vocabulary.encode(s)) + list(rule.suffix_ids), np.int32)
              for s in seqs]
  shuffle = (split == "train") if shuffle is None else shuffle
  stream = Stream(proteins, batch_size, sequence_length, seed, shard, shuffle,
                  f"task {task_name!r} split {split!r}")
  steps = itertools.count(start_step) if repeat else range(start_step, stream.steps_per_epoch)
  for step in steps:
    yield stream.batch(step)
