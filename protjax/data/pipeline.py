"""The streaming input pipeline: FASTA shards -> masked, batched numpy features.

One of the two corpus paths behind `DataConfig` (`protjax.data.config`):
this one streams FASTA (`sources.FastaSource`) through tf.data, for quick
starts and small corpora; `prepared_pipeline` reads a prepared corpus by
index, for UniRef/BFD (resume in seconds at any step, any number of hosts).

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

from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from protjax.data import feature_converters, preprocessors, registry
# Re-exported: DataConfig lives in a TensorFlow-free module (it also drives
# the NumPy backend); the sources and the registry moved out of this module.
from protjax.data.config import DEFAULT_SHUFFLE_BUFFER, DataConfig  # noqa: F401
from protjax.data.readers import is_validation  # noqa: F401
from protjax.data.registry import TaskSpec, register_task  # noqa: F401
from protjax.data.seqio_tasks import seqio_preprocessor  # noqa: F401
from protjax.data.sources import (SPLITS, FastaSource, epoch_and_offset, epochs,  # noqa: F401
                                  input_errors)
from protjax.errors import InputError

LENGTH_POLICIES = ("crop", "drop")


def get_spec(task_name: str) -> TaskSpec:
  """The registered task `task_name`, the built-in tasks included."""
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  return registry.get_spec(task_name)


# --- the fast batched pipeline ---------------------------------------------------

def build_dataset(spec: TaskSpec, *, split: str, sequence_length, batch_size: int,
                  seed: int, start_step: int = 0,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  feature_converter: Optional[str] = None, pack: bool = False,
                  repeat: bool = True, shuffle: Optional[bool] = None,
                  length_policy: str = "crop", mask_rate: Optional[float] = None,
                  map_rare_residues: bool = True,
                  source_files: Optional[Sequence[str]] = None,
                  validation_fraction: Optional[float] = None,
                  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
  """The tf.data pipeline behind `get_dataset` (same arguments, the task's spec)."""
  if spec.prepared:
    raise InputError(f"task {spec.name!r} reads a prepared corpus: build its batches with "
                     "protjax.data.config.get_dataset (or DataConfig)")
  objective, kind, length = spec.run_settings(
      sequence_length=sequence_length, batch_size=batch_size,
      feature_converter=feature_converter, mask_rate=mask_rate,
      map_rare_residues=map_rare_residues)
  if length_policy not in LENGTH_POLICIES:
    raise InputError(f"unknown length policy {length_policy!r}; expected {LENGTH_POLICIES}")
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


def _numpy_batches(ds: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
  it = ds.as_numpy_iterator()
  count = 0
  while True:
    try:
      with input_errors():
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
  return batches(get_spec(task_name), split=split, sequence_length=sequence_length,
                 batch_size=batch_size, seed=seed, start_step=start_step,
                 shard_info=shard_info, feature_converter=feature_converter, pack=pack,
                 repeat=repeat, **kwargs)


def batches(spec: TaskSpec, *, split: str, batch_size: int,
            shard_info: Optional[seqio.ShardInfo] = None, **kwargs
            ) -> Iterator[dict[str, np.ndarray]]:
  """`get_dataset` for a task's spec (what `protjax.data.config.get_dataset` calls)."""
  ds = build_dataset(spec, split=split, batch_size=batch_size, shard_info=shard_info,
                     **kwargs)
  what = f"task {spec.name!r} split {split!r}" + (
      f" shard {shard_info.index}/{shard_info.num_shards}" if shard_info else "")
  return _numpy_batches(ds, f"{what} with batch_size {batch_size}")
