"""`DataConfig`: the gin-bound data settings, and which path builds batches.

`get_dataset` is where a task name meets a corpus path, side by side:
- a task over FASTA files (`sources.FastaSource`): `pipeline`, streaming
  through tf.data (quick starts, small corpora);
- a task over a prepared corpus (`sources.PreparedSource`, made by
  `protjax-data prepare`): `prepared_pipeline`, reading records by index
  (UniRef/BFD: resume in seconds at any step, the same global batches on any
  number of hosts);
- `backend = 'numpy'`: `numpy_pipeline`, FASTA without TensorFlow (t5, bert, electra objectives);
- a `{corpus}_txl` task (ProtTXL): `stream`, one stream of proteins cut into
  rows that continue from step to step, on either backend.

TensorFlow-free on purpose: a run on a machine without TensorFlow/seqio (a
bare GPU box) binds `DataConfig.backend = 'numpy'` and the same gin files
parse, and a prepared-corpus task starts without importing either (the
task specs come from `protjax.data.corpora`, not from seqio's registry;
`import tasks` adds the SeqIO tasks for seqio's own API). The built-in
tasks are looked up here, at the edge, never by the pipelines.
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
      (required for uniref50, uniref100, bfd; protjax never downloads); for a
      `*_prepared_*` task, the prepared corpus folder.
    validation_fraction: share of ids held out for "validation" (FASTA tasks;
      a prepared corpus fixed its split when it was prepared).
    mask_rate: None for the objective's default (0.15 t5/bert, 0.25 electra).
    map_rare_residues: map U Z O B to X before tokenising (ProtTrans default).
    shuffle_buffer_size: records in the streaming shuffle buffer (a prepared
      corpus is permuted whole instead).
    backend: "seqio" (tf.data; streams corpora of any size) or "numpy"
      (`numpy_pipeline`: no TensorFlow, any objective, corpus in memory).
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
    return get_dataset(
        self.task_name, backend=self.backend, split=split, sequence_length=self.sequence_length,
        batch_size=batch_size or self.batch_size, seed=self.seed, start_step=start_step,
        shard_info=shard_info, feature_converter=self.feature_converter, pack=self.pack,
        repeat=(split == "train") if repeat is None else repeat,
        length_policy=self.length_policy, mask_rate=self.mask_rate,
        map_rare_residues=self.map_rare_residues, source_files=self.source_files or None,
        validation_fraction=self.validation_fraction,
        shuffle_buffer_size=self.shuffle_buffer_size)


def get_dataset(task_name: str, *, backend: str = "seqio", **kwargs
                ) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches of a registered task from the path its corpus needs.

  Arguments as `protjax.data.pipeline.get_dataset` (split, sequence_length,
  batch_size, seed, start_step, shard_info, ...); `backend` "seqio" picks the
  path from the task's source, "numpy" is the TensorFlow-free ProtT5 path.
  """
  from protjax.data import stream  # pylint: disable=import-outside-toplevel
  if stream.is_stream_task(task_name):
    # ProtTXL's stream (NumPy, no TensorFlow) whatever the backend.
    return stream.get_dataset(task_name, **kwargs)
  if backend == "numpy":
    from protjax.data import numpy_pipeline  # pylint: disable=import-outside-toplevel
    return numpy_pipeline.get_dataset(task_name, **kwargs)
  if backend != "seqio":
    from protjax.errors import InputError  # pylint: disable=import-outside-toplevel
    raise InputError(f"unknown DataConfig.backend {backend!r}; expected one of {BACKENDS}")
  # pylint: disable=import-outside-toplevel
  from protjax.data import corpora  # noqa: F401  (the built-in tasks' specs; no TensorFlow)
  from protjax.data import registry
  spec = registry.get_spec(task_name)
  if spec.prepared:
    from protjax.data import prepared_pipeline
    return prepared_pipeline.batches(spec, **kwargs)
  from protjax.data import pipeline
  return pipeline.batches(spec, **kwargs)


GIN_CONFIGURABLES = (DataConfig,)
