"""`DataConfig`: the gin-bound data settings, and which backend builds batches.

TensorFlow-free on purpose: a run on a machine without TensorFlow/seqio (a
bare GPU box) binds `DataConfig.backend = 'numpy'` and the same gin files
parse, with `protjax.data.numpy_pipeline` behind `get_dataset`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import numpy as np

BACKENDS = ("seqio", "numpy")
DEFAULT_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """This host's shard of the corpus; both backends read `index` and
  `num_shards` only (as of `seqio.ShardInfo`, which works as well)."""
  index: int
  num_shards: int


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Gin-bindable data settings (`DataConfig.task_name = "uniref50_t5"` ...).

  Attributes:
    task_name: registered task, `{corpus}_{objective}`.
    sequence_length: tokens per example incl. `</s>` (512, 1024, 2048 by phase).
    batch_size: examples per step. `get_dataset` here yields this many per
      host unless `batch_size=` is passed; the trainer's PipelineSource treats
      it as the global batch and passes batch_size / num_hosts.
    seed: data seed.
    pack: pack short proteins together (segment ids keep them apart).
    length_policy: "crop" (random window) or "drop" sequences that do not fit.
    feature_converter: None (objective's default), "encdec" or "encoder".
    source_files: FASTA paths/globs for the corpus, one string or a tuple
      (required for uniref50, uniref100, bfd; protjax never downloads).
    validation_fraction: share of ids held out for "validation".
    mask_rate: None for the objective's default (0.15 t5/bert, 0.25 electra).
    map_rare_residues: map U Z O B to X before tokenising (ProtTrans default).
    shuffle_buffer_size: records in the seqio backend's shuffle buffer.
    backend: "seqio" (tf.data; streams corpora of any size) or "numpy"
      (`numpy_pipeline`: no TensorFlow, ProtT5 objective, corpus in memory).
  """
  task_name: str = "protjax_sample_t5"
  sequence_length: int = 512
  batch_size: int = 8
  seed: int = 0
  pack: bool = False
  length_policy: str = "crop"
  feature_converter: Optional[str] = None
  source_files: tuple[str, ...] | str = ()
  validation_fraction: float = 0.05
  mask_rate: Optional[float] = None
  map_rare_residues: bool = True
  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER
  backend: str = "seqio"

  def get_dataset(self, split: str = "train", *, start_step: int = 0,
                  shard_info: Optional[Any] = None,
                  repeat: Optional[bool] = None, batch_size: Optional[int] = None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Batches with these settings; repeat defaults to split == "train".

    shard_info: this host's `ShardInfo` (or `seqio.ShardInfo`), None on one host.
    """
    if self.backend == "seqio":
      from protjax.data import pipeline as backend  # pylint: disable=import-outside-toplevel
    elif self.backend == "numpy":
      from protjax.data import numpy_pipeline as backend  # pylint: disable=import-outside-toplevel
    else:
      from protjax.errors import InputError  # pylint: disable=import-outside-toplevel
      raise InputError(f"unknown DataConfig.backend {self.backend!r}; expected one of {BACKENDS}")
    return backend.get_dataset(
        self.task_name, split=split, sequence_length=self.sequence_length,
        batch_size=batch_size or self.batch_size, seed=self.seed, start_step=start_step,
        shard_info=shard_info, feature_converter=self.feature_converter, pack=self.pack,
        repeat=(split == "train") if repeat is None else repeat,
        length_policy=self.length_policy, mask_rate=self.mask_rate,
        map_rare_residues=self.map_rare_residues, source_files=self.source_files or None,
        validation_fraction=self.validation_fraction,
        shuffle_buffer_size=self.shuffle_buffer_size)


GIN_CONFIGURABLES = (DataConfig,)
