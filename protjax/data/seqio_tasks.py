"""The SeqIO side of the task registry: a `registry.TaskSpec` as a seqio.Task.

`registry.enable_seqio()` (called by `import tasks`) adds every spec here;
the per-example preprocessor applies the batched pipeline's functions to a
batch of one, so `seqio.get_mixture_or_task(name).get_dataset(...)` gives
the same kind of examples as the batched pipelines.
"""
from __future__ import annotations

import seqio
import tensorflow as tf

from protjax.data import preprocessors
from protjax.data.objectives import Objective
from protjax.vocab import ResidueVocabulary

# protjax's vocabularies implement seqio.Vocabulary's interface without
# importing seqio (`protjax.vocab`); seqio code that checks the type sees one.
seqio.Vocabulary.register(ResidueVocabulary)


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


def add(spec) -> seqio.Task:
  """Registers `spec` (a `registry.TaskSpec`) in seqio.TaskRegistry, replacing
  any task of that name."""
  features = {k: seqio.Feature(spec.objective.vocabulary, add_eos=False)
              for k in ("inputs", "targets")}
  if spec.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(spec.name)
  return seqio.TaskRegistry.add(spec.name, source=spec.source, output_features=features,
                                preprocessors=[seqio_preprocessor(spec.objective,
                                                                  spec.length_policy)],
                                shuffle_buffer_size=None)
