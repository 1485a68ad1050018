"""The task registry: a task = a corpus source + a pretraining objective.

Tasks are registered SeqIO tasks (`seqio.get_mixture_or_task(name)` works,
with a per-example preprocessor) and, beside them, `TaskSpec`s that the
batched pipelines read: the source (`sources.FastaSource` streams FASTA,
`sources.PreparedSource` reads a prepared corpus by index) and the objective.

This module only keeps the registry. The built-in tasks are registered by
the top-level `tasks` package, at the edge: code that looks tasks up by name
(`protjax.data.config.get_dataset`, `protjax-data`) imports `tasks` first,
and the pipelines never import it, so imports run one way: readers ->
sources -> registry -> tasks -> config.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import seqio
import tensorflow as tf

from protjax.data import preprocessors
from protjax.data.preprocessors import Objective, make_objective
from protjax.errors import InputError


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the batched pipelines need to know about a registered task."""
  name: str
  source: Any  # sources.FastaSource or sources.PreparedSource
  objective: Objective

  @property
  def default_converter(self) -> str:
    return "encdec" if self.objective.name == "t5" else "encoder"

  @property
  def prepared(self) -> bool:
    """True when the source is a prepared corpus (index-based pipeline)."""
    return bool(getattr(self.source, "index_based", False))


_SPECS: dict[str, TaskSpec] = {}


def seqio_preprocessor(objective: Objective, length_policy: str = "crop"):
  """Per-example seqio preprocessor (for `seqio.Task.get_dataset` users).

  Applies the same functions as the batched pipeline to a batch of one, with
  seeds from seqio's seed manager.
  """

  def preprocess(dataset: tf.data.Dataset, sequence_length) -> tf.data.Dataset:
    max_res = objective.max_residues(preprocessors.single_length(sequence_length))
    if length_policy == "drop":
      dataset = dataset.filter(lambda ex: preprocessors.keep_if_fits(ex["sequence"], max_res))

    @seqio.map_over_dataset(num_seeds=2)
    def one(ex, seeds):
      s = preprocessors.random_crop(ex["sequence"][None], max_res, seeds[0])
      f = objective.mask(preprocessors.tokenize(s, objective).to_tensor(), seeds[1])
      return {"id": ex["id"], **{k: v[0] for k, v in f.items()}}

    return one(dataset)

  return preprocess


def register_task(name: str, source: Any, objective: str, *,
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
  """The registered task `task_name` (InputError naming the registered ones if none)."""
  if task_name not in _SPECS:
    raise InputError(f"unknown task {task_name!r}; registered: {', '.join(sorted(_SPECS))}")
  return _SPECS[task_name]
