"""The task registry: a task = a corpus + a pretraining objective.

One list of tasks, two sides:
- `TaskSpec`s, kept here without TensorFlow or seqio: what the batched
  pipelines read (`protjax.data.config.get_dataset`). The built-in tasks'
  specs are registered by `protjax.data.corpora`, which `config` imports, so
  a run on a prepared corpus starts without importing TensorFlow or seqio
  (a fresh process spent 8-13 s importing them for nothing).
- the same tasks as SeqIO tasks (`seqio.get_mixture_or_task(name)` works,
  with a per-example preprocessor), for users of seqio's own API:
  `enable_seqio()` puts every spec in seqio.TaskRegistry and every later
  `register_task` too. The top-level `tasks` package calls it on import
  (SeqIO's convention: `import tasks` registers the tasks).

Imports run one way: readers, objectives -> registry -> corpora -> config,
with the SeqIO side (`seqio_tasks`, `sources`: TensorFlow) imported only by
`enable_seqio`, a spec's `source` and the streaming pipeline.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Union

from protjax.data.objectives import (CONVERTERS, Objective, make_objective,
                                     single_length)
from protjax.errors import InputError

Patterns = Union[str, Sequence[str], Callable[[], Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A registered task, as the batched pipelines need it.

  Attributes:
    name: `{corpus}_{objective}` (or any name given to `register_task`).
    corpus: corpus name, for messages and `PROTJAX_<CORPUS>_FILES`.
    files: FASTA paths/globs, or [the prepared folder] when `prepared`; or a
      callable giving them (resolved when a dataset is built, so gin and
      flags can set them after registration).
    objective: framing and masking.
    prepared: a prepared corpus read by index (`prepared_pipeline`), else
      FASTA streamed by `pipeline`.
    check_duplicates: reject an id repeated within a FASTA file.
    length_policy: the seqio task's rule for long proteins ("crop", "drop").
  """
  name: str
  corpus: str
  files: Patterns
  objective: Objective
  prepared: bool = False
  check_duplicates: bool = True
  length_policy: str = "crop"

  def patterns(self) -> list[str]:
    """The task's own files (the callable's answer, if it is one)."""
    files = self.files() if callable(self.files) else self.files
    return [files] if isinstance(files, str) else list(files or ())

  @functools.cached_property
  def source(self) -> Any:
    """The corpus as a seqio DataSource (imports TensorFlow): a
    `sources.FastaSource`, or a `sources.PreparedSource` when prepared."""
    from protjax.data import sources  # pylint: disable=import-outside-toplevel
    if self.prepared:
      return sources.PreparedSource(self.files, name=self.corpus)
    return sources.FastaSource(self.files, name=self.corpus,
                               check_duplicates=self.check_duplicates)

  def run_settings(self, *, sequence_length, batch_size: int,
                   feature_converter: Optional[str] = None, mask_rate: Optional[float] = None,
                   map_rare_residues: bool = True) -> tuple[Objective, str, int]:
    """(objective, feature converter, tokens per row) of one run of this task,
    checked the same way by every pipeline: the objective with the run's mask
    rate and rare-residue mapping; InputError for an unknown converter, a
    batch size below 1 or unequal input/target lengths, ValueError when no
    residue fits in a row."""
    objective = self.objective
    if mask_rate is not None or not map_rare_residues:
      objective = make_objective(objective.name,
                                 objective.mask_rate if mask_rate is None else mask_rate,
                                 map_rare_residues=map_rare_residues)
    kind = feature_converter or objective.converter
    if kind not in CONVERTERS:
      raise InputError(f"unknown feature converter {kind!r}; expected {CONVERTERS}")
    if batch_size < 1:
      raise InputError(f"batch_size must be positive, got {batch_size}")
    length = single_length(sequence_length)
    objective.max_residues(length)  # ValueError if no residue fits
    return objective, kind, length


_SPECS: dict[str, TaskSpec] = {}
_SEQIO = [False]  # enable_seqio() was called: specs go to seqio.TaskRegistry too


def register_task(name: str, files: Patterns, objective: str, *, corpus: str,
                  prepared: bool = False, check_duplicates: bool = True,
                  mask_rate: Optional[float] = None, length_policy: str = "crop") -> TaskSpec:
  """Registers task `name` (replacing any earlier one); also as a seqio.Task
  once `enable_seqio()` has run. Arguments as `TaskSpec`'s attributes;
  `objective` a name of `objectives.OBJECTIVE_NAMES`."""
  spec = TaskSpec(name, corpus, files, make_objective(objective, mask_rate), prepared=prepared,
                  check_duplicates=check_duplicates, length_policy=length_policy)
  _SPECS[name] = spec
  if _SEQIO[0]:
    from protjax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
    seqio_tasks.add(spec)
  return spec


def enable_seqio() -> None:
  """Puts every registered task in seqio.TaskRegistry, and every later one
  (imports seqio and TensorFlow; idempotent)."""
  from protjax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
  if not _SEQIO[0]:
    for spec in _SPECS.values():
      seqio_tasks.add(spec)
    _SEQIO[0] = True


def get_spec(task_name: str) -> TaskSpec:
  """The registered task `task_name` (InputError naming the registered ones if none)."""
  if task_name not in _SPECS:
    raise InputError(f"unknown task {task_name!r}; registered: {', '.join(sorted(_SPECS))}")
  return _SPECS[task_name]
