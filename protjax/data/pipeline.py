"""The pretraining input pipeline: FASTA shards -> masked, batched numpy features.

Determinism contract: the batch at global step s depends only on
(task, split, seed, s, host shard). Resuming with `start_step=k` therefore
yields exactly batches k, k+1, ... of an uninterrupted run:
- record order: files sorted, then (train) file order and a record shuffle
  buffer seeded by (`seed`, epoch); every transformation runs with
  deterministic ordering;
- `start_step` skips raw strings before any tokenising or masking, so the
  skip is cheap (see "Resume cost" below);
- crop windows and masks are drawn with `tf.random.stateless_*` from
  `step_seed(seed, shard, step, purpose)`: independent for every example of a
  batch, different at every step (so the same protein gets fresh masks each
  epoch), identical across restarts and thread timings.

Per-host sharding (`seqio.ShardInfo`): with at least as many files as hosts,
host i reads files i, i+n, ...; otherwise every host reads every file and
keeps records i, i+n, ... of each. Either way shards are disjoint and cover
the data. Splits: a record is in "validation" when crc32(id) mod 10000 falls
below `validation_fraction` * 10000 (default 5%), else in "train", so the two
never overlap and the split does not depend on file order.

Multi-host evaluation: with repeat=False hosts may get different numbers of
batches (shards differ in size); the caller must agree on a step count.

Resume cost: every epoch is seeded by (seed, epoch), so a resume builds the
epoch holding record start_step * batch_size directly; it reads at most one
epoch to learn the epoch's length, then skips into that epoch (at most two
epochs of raw text, at about 30k records/s per host on a 2-core CPU), however
many epochs in. Packing still replays the packer from step 0.

Limitations: duplicate ids are checked within a file only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from protjax.data import feature_converters, preprocessors
# DataConfig lives in a TensorFlow-free module (it also drives the NumPy
# backend); re-exported here.
from protjax.data.config import DEFAULT_SHUFFLE_BUFFER, DataConfig  # noqa: F401
from protjax.data.preprocessors import Objective, make_objective
from protjax.data.readers import is_validation, read_fasta, resolve_files
from protjax.errors import InputError

SPLITS = ("train", "validation")
LENGTH_POLICIES = ("crop", "drop")


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
    with _input_errors():
      empty = not list(one_epoch(tf.constant(first_epoch, tf.int64)).take(1))
    if empty:
      return one_epoch(tf.constant(first_epoch, tf.int64))
    last = np.iinfo(np.int64).max
  else:
    last = first_epoch + num_epochs
  return tf.data.Dataset.range(first_epoch, last).flat_map(one_epoch)


def epoch_and_offset(one_epoch: Callable[[tf.Tensor], tf.data.Dataset],
                     position: int) -> tuple[int, int]:
  """Where record `position` of the endless stream of epochs lies: (epoch,
  offset in it). Counts at most min(position + 1, epoch length) records of
  one epoch, instead of replaying `position` records: every epoch holds the
  same records, only their order differs."""
  if position == 0:
    return 0, 0
  with _input_errors():
    seen = int(one_epoch(tf.constant(0, tf.int64)).take(position + 1).reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1))
  if seen == 0 or seen > position:
    return 0, position
  return position // seen, position % seen


# --- task registry --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the fast pipeline needs to know about a registered task."""
  name: str
  source: FastaSource
  objective: Objective

  @property
  def default_converter(self) -> str:
    return "encdec" if self.objective.name == "t5" else "encoder"


_SPECS: dict[str, TaskSpec] = {}


def _length(sequence_length: Union[int, Mapping[str, int]]) -> int:
  """One length for aligned inputs/targets (ints or seqio's {'inputs', 'targets'})."""
  if isinstance(sequence_length, int):
    return sequence_length
  lengths = {int(v) for k, v in sequence_length.items() if k in ("inputs", "targets") and v}
  if len(lengths) != 1:
    raise InputError(f"sequence_length {dict(sequence_length)}: inputs and targets must be "
                     "set and equal (masked inputs are aligned with their targets)")
  return lengths.pop()


def seqio_preprocessor(objective: Objective, length_policy: str = "crop"):
  """Per-example seqio preprocessor (for `seqio.Task.get_dataset` users).

  Applies the same functions as the batched pipeline to a batch of one, with
  seeds from seqio's seed manager.
  """

  def preprocess(dataset: tf.data.Dataset, sequence_length) -> tf.data.Dataset:
    max_res = objective.max_residues(_length(sequence_length))
    if length_policy == "drop":
      dataset = dataset.filter(lambda ex: preprocessors.keep_if_fits(ex["sequence"], max_res))

    @seqio.map_over_dataset(num_seeds=2)
    def one(ex, seeds):
      s = preprocessors.random_crop(ex["sequence"][None], max_res, seeds[0])
      f = objective.mask(preprocessors.tokenize(s, objective).to_tensor(), seeds[1])
      return {"id": ex["id"], **{k: v[0] for k, v in f.items()}}

    return one(dataset)

  return preprocess


def register_task(name: str, source: FastaSource, objective: str, *,
                  mask_rate: Optional[float] = None,
                  length_policy: str = "crop") -> seqio.Task:
  """Registers `name` in seqio.TaskRegistry (replacing any earlier one)."""
  obj = make_objective(objective, mask_rate)
  features = {k: seqio.Feature(obj.vocabulary, add_eos=False) for k in ("inputs", "targets")}
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(name, source=source, output_features=features,
                                preprocessors=[seqio_preprocessor(obj, length_policy)],
                                shuffle_buffer_size=None)
  _SPECS[name] = TaskSpec(name, source, obj)
  return task


def get_spec(task_name: str) -> TaskSpec:
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  if task_name not in _SPECS:
    raise InputError(f"unknown task {task_name!r}; registered: {', '.join(sorted(_SPECS))}")
  return _SPECS[task_name]


# --- the fast batched pipeline ---------------------------------------------------

def build_dataset(task_name: str, *, split: str, sequence_length, batch_size: int,
                  seed: int, start_step: int = 0,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  feature_converter: Optional[str] = None, pack: bool = False,
                  repeat: bool = True, shuffle: Optional[bool] = None,
                  length_policy: str = "crop", mask_rate: Optional[float] = None,
                  map_rare_residues: bool = True,
                  source_files: Optional[Sequence[str]] = None,
                  validation_fraction: Optional[float] = None,
                  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
  """The tf.data pipeline behind `get_dataset` (same arguments)."""
  spec = get_spec(task_name)
  objective = spec.objective
  if mask_rate is not None or not map_rare_residues:
    objective = make_objective(objective.name,
                               objective.mask_rate if mask_rate is None else mask_rate,
                               map_rare_residues=map_rare_residues)
  kind = feature_converter or spec.default_converter
  if kind not in feature_converters.CONVERTERS:
    raise InputError(f"unknown feature converter {kind!r}; expected "
                     f"{feature_converters.CONVERTERS}")
  if length_policy not in LENGTH_POLICIES:
    raise InputError(f"unknown length policy {length_policy!r}; expected {LENGTH_POLICIES}")
  if batch_size < 1:
    raise InputError(f"batch_size must be positive, got {batch_size}")
  length = _length(sequence_length)
  max_res = objective.max_residues(length)
  source = spec.source
  if isinstance(source_files, str):  # one glob from a flag or gin binding
    source_files = [source_files]
  if source_files:
    source = source.replace(patterns=list(source_files))
  if validation_fraction is not None:
    source = source.replace(validation_fraction=validation_fraction)
  shuffle = (split == "train") if shuffle is None else shuffle
  shard = shard_info.index if shard_info else 0

  def one_epoch(epoch):
    seqs = source.epoch(split, epoch, shuffle=shuffle, seed=seed, shard_info=shard_info,
                        shuffle_buffer_size=shuffle_buffer_size).map(lambda i, s: s)
    if length_policy == "drop":
      seqs = seqs.filter(lambda s: preprocessors.keep_if_fits(s, max_res))
    return seqs

  def crop_and_tokenize(step, s):
    s = preprocessors.random_crop(s, max_res, preprocessors.step_seed(
        seed, shard, step, preprocessors.PURPOSE_CROP))
    return preprocessors.tokenize(s, objective)

  def finish(step, tokens, segment_ids=None, positions=None):
    feats = objective.mask(tokens, preprocessors.step_seed(
        seed, shard, step, preprocessors.PURPOSE_MASK))
    return feature_converters.convert(feats, kind, segment_ids, positions)

  autotune = tf.data.AUTOTUNE
  if not pack:
    # Batches are runs of records across epoch boundaries: resuming starts in
    # the epoch that holds record start_step * batch_size.
    first_epoch, offset = (epoch_and_offset(one_epoch, start_step * batch_size) if repeat
                           else (0, start_step * batch_size))
    seqs = epochs(one_epoch, first_epoch, None if repeat else 1).skip(offset)
    ds = seqs.batch(batch_size, drop_remainder=True).enumerate(start=start_step)
    ds = ds.map(lambda step, s: finish(step, preprocessors.pad_to(crop_and_tokenize(step, s),
                                                                  length)),
                num_parallel_calls=autotune, deterministic=True)
  else:
    # Crop in chunks (seeded by chunk index, independent of start_step), then
    # pack one protein at a time with seqio's deterministic greedy packer.
    seqs = epochs(one_epoch, 0, None if repeat else 1)
    chunks = seqs.batch(256).enumerate()
    tokens = chunks.map(crop_and_tokenize, num_parallel_calls=autotune, deterministic=True)
    tokens = tokens.unbatch().map(lambda t: {"targets": t})
    packed = preprocessors.pack_dataset(tokens, length)
    ds = packed.batch(batch_size, drop_remainder=True).enumerate().skip(start_step)
    ds = ds.map(lambda step, p: finish(step, p["targets"], p["targets_segment_ids"],
                                       p["targets_positions"]),
                num_parallel_calls=autotune, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(autotune)


@contextlib.contextmanager
def _input_errors():
  """Reading a dataset: tf.data wraps an InputError raised in the record
  generator in an opaque OpError; re-raise the original one-line error."""
  _PENDING_ERROR.clear()
  try:
    yield
  except tf.errors.OpError as e:
    if _PENDING_ERROR:
      raise _PENDING_ERROR[0] from None
    raise InputError(f"input pipeline failed: {e.message.splitlines()[0]}") from e


def _numpy_batches(ds: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
  it = ds.as_numpy_iterator()
  count = 0
  while True:
    try:
      with _input_errors():
        batch = next(it)
    except StopIteration:
      if count == 0:
        raise InputError(f"{what} gives not a single complete batch (too few records, or "
                         "none in this split/shard)") from None
      return
    count += 1
    yield batch


def get_dataset(task_name: str, *, split: str,
                sequence_length: Union[int, Mapping[str, int]], batch_size: int,
                seed: int, start_step: int = 0,
                shard_info: Optional[seqio.ShardInfo] = None,
                feature_converter: Optional[str] = None, pack: bool = False,
                repeat: bool = True, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches `{feature: int32 [batch_size, length]}` for a registered task.

  Args:
    task_name: e.g. "protjax_sample_t5" (`{corpus}_{objective}`).
    split: "train" or "validation".
    sequence_length: int, or {"inputs": L, "targets": L} (must be equal).
    batch_size: examples per batch on this host.
    seed: data seed (order, crops, masks).
    start_step: first global step to yield (resume).
    shard_info: this host's `seqio.ShardInfo` (None = single host).
    feature_converter: "encdec" or "encoder" (default from the objective:
      t5 -> encdec, bert/electra -> encoder).
    pack: pack several proteins per row with segment ids / positions.
    repeat: loop over epochs forever (train) or stop after one (eval).
    **kwargs: shuffle (default: split == "train"), length_policy ("crop" |
      "drop"), mask_rate, map_rare_residues (U Z O B -> X, default True), source_files (paths/globs overriding the task's),
      validation_fraction, shuffle_buffer_size.

  Yields:
    Feature dicts (seqio's standard names). Incomplete final batches are dropped.
  """
  ds = build_dataset(task_name, split=split, sequence_length=sequence_length,
                     batch_size=batch_size, seed=seed, start_step=start_step,
                     shard_info=shard_info, feature_converter=feature_converter,
                     pack=pack, repeat=repeat, **kwargs)
  what = f"task {task_name!r} split {split!r}" + (
      f" shard {shard_info.index}/{shard_info.num_shards}" if shard_info else "")
  return _numpy_batches(ds, f"{what} with batch_size {batch_size}")
