"""Pretraining objectives: how a protein is framed, and what is masked (no TensorFlow).

The rules every pipeline applies (streaming `pipeline` through
`preprocessors`, `prepared_pipeline` and `numpy_pipeline` in NumPy), kept
free of TensorFlow so that the prepared and NumPy paths start without it
(`Objective.mask`, the TensorFlow masking, imports `preprocessors` on use).
The rules themselves are described in `preprocessors`' module docstring.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Union

from protjax.errors import InputError
from protjax.vocab import ProtBertVocabulary, ProtT5Vocabulary, ResidueVocabulary

# Feature converters every pipeline offers (seqio's feature names; see
# `feature_converters`): encoder-decoder (ProtT5) and encoder-only.
CONVERTERS = ("encdec", "encoder")

# Random replacements draw from the 20 standard amino acids (not X/B/O/U/Z,
# which would teach the model to predict ambiguity codes from nothing).
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@dataclasses.dataclass(frozen=True)
class Objective:
  """A pretraining objective: how sequences are framed and masked.

  Attributes:
    name: "t5", "bert", "electra" or "xlnet".
    vocabulary: the residue vocabulary of the model family.
    mask_rate: probability that a residue is selected for masking.
    prefix_ids: ids put before the residues (`[CLS]` for ProtBert).
    suffix_ids: ids put after the residues (`</s>` for ProtT5, `[SEP]`).
    replace_with_mask / replace_with_random: BERT's 80/10 split of the selected
      positions (the rest keep their residue). Unused by "t5", which always
      replaces with the sentinel.
    converter: the feature converter its tasks get unless a run names one
      ("encdec", "encoder"; "lm" for ProtTXL's stream, `stream`).
  """
  name: str
  vocabulary: ResidueVocabulary
  mask_rate: float
  prefix_ids: tuple[int, ...] = ()
  suffix_ids: tuple[int, ...] = ()
  replace_with_mask: float = 0.8
  replace_with_random: float = 0.1
  converter: str = "encoder"

  @property
  def num_special(self) -> int:
    return len(self.prefix_ids) + len(self.suffix_ids)

  def max_residues(self, length: int) -> int:
    """Residues that fit in an example of `length` tokens with its specials."""
    if length <= self.num_special:
      raise ValueError(f"sequence length {length} leaves no room for residues")
    return length - self.num_special

  def mask(self, tokens, seed) -> dict:
    """`[batch, length]` int tf.Tensor ids, a `[2]` stateless seed -> dict of
    inputs, targets, loss_weights (same shape): the streaming pipeline's
    TensorFlow masking (`preprocessors`, imported here, on use)."""
    from protjax.data.preprocessors import bert_mask, t5_denoise  # pylint: disable=import-outside-toplevel
    if self.name == "t5":
      return t5_denoise(tokens, seed, self.vocabulary, rate=self.mask_rate)
    return bert_mask(tokens, seed, self.vocabulary, rate=self.mask_rate,
                     replace_with_mask=self.replace_with_mask,
                     replace_with_random=self.replace_with_random)


# Each objective's vocabulary, default mask rate, the vocabulary's ids that
# frame a protein (before, after) and its tasks' feature converter. XLNet
# masks nothing here (its permutation LM is drawn on the device,
# `models/xlnet.py`) and ends a protein with `[SEP] [CLS]`; ProtTXL's stream
# (`stream`) ends each protein with `[SEP]` and predicts the next token.
OBJECTIVES = {
    "t5": (ProtT5Vocabulary, 0.15, (), ("eos_id",), "encdec"),
    "bert": (ProtBertVocabulary, 0.15, ("cls_id",), ("eos_id",), "encoder"),
    "electra": (ProtBertVocabulary, 0.25, ("cls_id",), ("eos_id",), "encoder"),
    "xlnet": (ProtBertVocabulary, 0.0, (), ("eos_id", "cls_id"), "encoder"),
    "txl": (ProtBertVocabulary, 0.0, (), ("eos_id",), "lm"),
}
# The objectives of example-at-a-time tasks (every pipeline, seqio too);
# "txl" is a stream's (`stream`).
OBJECTIVE_NAMES = ("t5", "bert", "electra", "xlnet")


def make_objective(name: str, mask_rate: Optional[float] = None,
                   map_rare_residues: bool = True) -> Objective:
  """The objective `name` (a key of `OBJECTIVES`) with its paper defaults."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; expected one of {tuple(OBJECTIVES)}")
  vocab_class, default_rate, prefix, suffix, converter = OBJECTIVES[name]
  v = vocab_class(map_rare_residues=map_rare_residues)
  return Objective(name, v, default_rate if mask_rate is None else mask_rate,
                   prefix_ids=tuple(getattr(v, t) for t in prefix),
                   suffix_ids=tuple(getattr(v, t) for t in suffix), converter=converter)


def single_length(sequence_length: Union[int, Mapping[str, int]]) -> int:
  """One length for aligned inputs/targets (ints or seqio's {'inputs', 'targets'})."""
  if isinstance(sequence_length, int):
    return sequence_length
  lengths = {int(v) for k, v in sequence_length.items() if k in ("inputs", "targets") and v}
  if len(lengths) != 1:
    raise InputError(f"sequence_length {dict(sequence_length)}: inputs and targets must be "
                     "set and equal (masked inputs are aligned with their targets)")
  return lengths.pop()
