"""Corpus sources: where a task's records come from (seqio DataSources).

- `FastaSource` streams FASTA files (plain or gzipped) record by record, with
  a seeded file order and shuffle buffer per epoch; `protjax.data.pipeline`
  turns its records into batches. Good for a quick start and small corpora;
  a resume reads up to two epochs of the host's share.
- `PreparedSource` reads a prepared corpus (`protjax-data prepare`) by record
  index; `protjax.data.prepared_pipeline` turns it into batches. The path for
  UniRef/BFD-sized corpora: a resume at any step is an index computation.

Both give `{"id", "sequence"}` string records through seqio's `get_dataset`
(the per-example SeqIO path) and split records into "train" and
"validation" by crc32 of the id (`readers.is_validation`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from protjax.data.config import DEFAULT_SHUFFLE_BUFFER
from protjax.data.readers import is_validation, read_fasta, resolve_files
from protjax.errors import InputError

SPLITS = ("train", "validation")


# Last InputError raised inside a tf.data generator: tf.data wraps it in an
# opaque OpError; the numpy iterator re-raises the original one-line error.
_PENDING_ERROR: list[InputError] = []


def _records(path: bytes, split: bytes, rec_index: int, rec_count: int,
             fraction: float, check_duplicates: bool, chunk: int = 256):
  """Python generator behind the source: chunks of (ids, sequences) of one
  file and split. Chunking amortises tf.data's per-call cost of a Python
  generator (one call per record would cap the source at ~2k records/s)."""
  want_validation = split.decode() == "validation"
  ids: list[str] = []
  seqs: list[str] = []
  try:
    for i, (rid, seq) in enumerate(read_fasta(path.decode(),
                                              check_duplicates=bool(check_duplicates))):
      if rec_count > 1 and i % rec_count != rec_index:
        continue
      if is_validation(rid, fraction) == want_validation:
        ids.append(rid)
        seqs.append(seq)
        if len(ids) == chunk:
          yield np.array(ids, dtype=object), np.array(seqs, dtype=object)
          ids, seqs = [], []
  except InputError as e:
    _PENDING_ERROR[:] = [e]
    raise
  if ids:
    yield np.array(ids, dtype=object), np.array(seqs, dtype=object)


class FastaSource(seqio.DataSource):
  """A seqio DataSource over FASTA files (globs, plain or gzipped).

  Args:
    patterns: file paths or globs, or a callable returning them (resolved when
      a dataset is built, so gin/flags can set them after registration).
    name: corpus name for error messages.
    validation_fraction: share of records (by id hash) in "validation".
    check_duplicates: reject repeated ids within a file.
    cycle_length: files read in parallel (interleaved deterministically).
  """

  def __init__(self, patterns: Union[Sequence[str], Callable[[], Sequence[str]]], *,
               name: str, validation_fraction: float = 0.05,
               check_duplicates: bool = True, cycle_length: int = 4):
    # Shuffles files and records itself (seeded), so seqio's Task adds no buffer.
    super().__init__(splits=SPLITS, performs_internal_shuffling=True)
    self._patterns = patterns
    self.name = name
    self.validation_fraction = validation_fraction
    self.check_duplicates = check_duplicates
    self.cycle_length = cycle_length

  def replace(self, **kwargs) -> "FastaSource":
    args = dict(patterns=self._patterns, name=self.name,
                validation_fraction=self.validation_fraction,
                check_duplicates=self.check_duplicates, cycle_length=self.cycle_length)
    args.update(kwargs)
    return FastaSource(args.pop("patterns"), **args)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def files(self) -> list[str]:
    """Sorted, de-duplicated files matched by the patterns (InputError if none)."""
    patterns = self._patterns() if callable(self._patterns) else self._patterns
    if isinstance(patterns, str):
      patterns = [patterns]
    if not patterns:
      raise InputError(f"no source files set for corpus {self.name!r}: pass FASTA paths or "
                       "globs (protjax-data --source, DataConfig.source_files, or "
                       f"PROTJAX_{self.name.upper()}_FILES)")
    return resolve_files(patterns, self.name)

  def list_shards(self, split: str) -> Sequence[str]:
    return self.files()

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length=None, use_cached=False, num_epochs: Optional[int] = 1,
                  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Records `{"id": str, "sequence": str}` of this host's shard of `split`.

    `num_epochs=None` repeats forever; with `shuffle`, every epoch has its own
    file order and `shuffle_buffer_size` record buffer, seeded by (seed, epoch).
    """
    def one_epoch(epoch):
      return self.epoch(split, epoch, shuffle=shuffle, seed=seed, shard_info=shard_info,
                        shuffle_buffer_size=shuffle_buffer_size)
    return epochs(one_epoch, 0, num_epochs).map(lambda i, s: {"id": i, "sequence": s})

  def epoch(self, split: str, epoch, *, shuffle: bool = True, seed: Optional[int] = None,
            shard_info: Optional[seqio.ShardInfo] = None,
            shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
    """(id, sequence) string pairs of one epoch (an int or int64 scalar tensor)
    of this host's shard of `split`; built without reading the epochs before."""
    if split not in SPLITS:
      raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    files = self.files()
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    if not 0 <= index < count:
      raise ValueError(f"shard index {index} outside [0, {count})")
    if len(files) >= count:
      files, rec_index, rec_count = files[index::count], 0, 1
    else:
      rec_index, rec_count = index, count
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    # Two shuffle seeds per (seed, epoch), distinct across epochs of one seed.
    file_seed = (0 if seed is None else int(seed)) * 1_000_003 + 2 * tf.cast(epoch, tf.int64)
    if shuffle:
      file_ds = file_ds.shuffle(len(files), seed=file_seed)
    signature = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))
    fraction, check = float(self.validation_fraction), bool(self.check_duplicates)

    def read(path):
      return tf.data.Dataset.from_generator(
          _records, args=(path, split, rec_index, rec_count, fraction, check),
          output_signature=signature).unbatch()

    ds = file_ds.interleave(read, cycle_length=max(1, min(self.cycle_length, len(files))),
                            block_length=1)
    if shuffle:
      ds = ds.shuffle(shuffle_buffer_size, seed=file_seed + 1)
    return ds


def epochs(one_epoch: Callable[[tf.Tensor], tf.data.Dataset], first_epoch: int,
           num_epochs: Optional[int]) -> tf.data.Dataset:
  """one_epoch(e) for e = first_epoch, first_epoch + 1, ... back to back
  (`num_epochs` of them; None = forever, or nothing at all if an epoch is
  empty, instead of spinning on an empty split or shard)."""
  if num_epochs is None:
    with input_errors():
      empty = not list(one_epoch(tf.constant(first_epoch, tf.int64)).take(1))
    if empty:
      return one_epoch(tf.constant(first_epoch, tf.int64))
    last = np.iinfo(np.int64).max
  else:
    last = first_epoch + num_epochs
  # one_epoch builds datasets in plain Python (file lists, seeds): AutoGraph
  # has nothing to convert there, and warned about os.path.isfile.
  return tf.data.Dataset.range(first_epoch, last).flat_map(
      tf.autograph.experimental.do_not_convert(one_epoch))


def epoch_and_offset(one_epoch: Callable[[tf.Tensor], tf.data.Dataset],
                     position: int) -> tuple[int, int]:
  """Where record `position` of the endless stream of epochs lies: (epoch,
  offset in it). Counts at most min(position + 1, epoch length) records of
  one epoch, instead of replaying `position` records: every epoch holds the
  same records, only their order differs."""
  if position == 0:
    return 0, 0
  with input_errors():
    seen = int(one_epoch(tf.constant(0, tf.int64)).take(position + 1).reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1))
  if seen == 0 or seen > position:
    return 0, position
  return position // seen, position % seen



@contextlib.contextmanager
def input_errors():
  """Reading a dataset: tf.data wraps an InputError raised in the record
  generator in an opaque OpError; re-raise the original one-line error.

  The error is taken out of `_PENDING_ERROR`, not left there: its traceback
  holds the frames that hold the tf.data iterator, and a module global would
  keep that iterator alive until interpreter shutdown, when its threads,
  still in the Python generator, can no longer take the GIL and its
  destructor waits for them forever (the hang after an error message).
  """
  _PENDING_ERROR.clear()
  try:
    yield
  except tf.errors.OpError as e:
    if _PENDING_ERROR:
      raise _PENDING_ERROR.pop() from None
    raise InputError(f"input pipeline failed: {e.message.splitlines()[0]}") from e


class PreparedSource(seqio.DataSource):
  """A seqio DataSource over a prepared corpus (`protjax-data prepare`).

  The batched path is `prepared_pipeline` (records by index); this class
  also serves seqio's per-example `Task.get_dataset`, in the same order.

  Args:
    directory: the corpus folder, or a callable returning a list with it
      (resolved when a dataset is built, so gin/flags can set it later).
    name: corpus name for error messages.
  """
  index_based = True

  def __init__(self, directory: Union[str, Callable[[], Sequence[str]]], *, name: str):
    super().__init__(splits=SPLITS, performs_internal_shuffling=True)
    self._directory = directory
    self.name = name

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def directory(self, override: Union[str, Sequence[str], None] = None) -> str:
    """The corpus folder: `override` (DataConfig.source_files) or the task's."""
    from protjax.data import prepared  # pylint: disable=import-outside-toplevel
    given = override or (self._directory() if callable(self._directory) else self._directory)
    return prepared.corpus_folder(given, self.name)

  def list_shards(self, split: str) -> Sequence[str]:
    from protjax.data import prepared  # pylint: disable=import-outside-toplevel
    corpus = prepared.PreparedCorpus(self.directory(), split)
    return [s["file"] for s in corpus.shards]

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length=None, use_cached=False, num_epochs: Optional[int] = 1
                  ) -> tf.data.Dataset:
    """Records `{"id": str, "sequence": str}`: this host's positions h, h + n, ...
    of the run's order (`prepared_pipeline.record_indices`)."""
    from protjax.data import prepared, prepared_pipeline  # pylint: disable=import-outside-toplevel
    corpus = prepared.PreparedCorpus(self.directory(), split)
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    n, seed = corpus.num_records, 0 if seed is None else int(seed)
    stop = None if num_epochs is None else n * num_epochs

    def records():
      chunk = 1024 * count
      start = 0
      while n and (stop is None or start < stop):
        end = start + chunk if stop is None else min(start + chunk, stop)
        positions = np.arange(start + index, end, count, dtype=np.int64)
        found = corpus.read(prepared_pipeline.record_indices(positions, n, seed, shuffle))
        pairs = [prepared.decode_record(r) for r in found]
        yield (np.array([p[0] for p in pairs], dtype=object),
               np.array([p[1] for p in pairs], dtype=object))
        start = end

    signature = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))
    ds = tf.data.Dataset.from_generator(records, output_signature=signature).unbatch()
    return ds.map(lambda i, s: {"id": i, "sequence": s})
