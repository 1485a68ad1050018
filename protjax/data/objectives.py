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
  """
  name: str
  vocabulary: ResidueVocabulary
  mask_rate: float
  prefix_ids: tuple[int, ...] = ()
  suffix_ids: tuple[int, ...] = ()
  replace_with_mask: float = 0.8
  replace_with_random: float = 0.1

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


def make_objective(name: str, mask_rate: Optional[float] = None,
                   map_rare_residues: bool = True) -> Objective:
  """The objective `name` in {"t5", "bert", "electra", "xlnet"} with its paper defaults."""
  if name == "t5":
    v = ProtT5Vocabulary(map_rare_residues=map_rare_residues)
    return Objective("t5", v, 0.15 if mask_rate is None else mask_rate,
                     suffix_ids=(v.eos_id,))
  if name in ("bert", "electra"):
    v = ProtBertVocabulary(map_rare_residues=map_rare_residues)
    default = 0.15 if name == "bert" else 0.25
    return Objective(name, v, default if mask_rate is None else mask_rate,
                     prefix_ids=(v.cls_id,), suffix_ids=(v.eos_id,))
  if name == "xlnet":
    v = ProtBertVocabulary(map_rare_residues=map_rare_residues)
    return Objective(name, v, 0.0 if mask_rate is None else mask_rate,
                     suffix_ids=(v.eos_id, v.cls_id))
  raise ValueError(f"unknown objective {name!r}; expected t5, bert, electra or xlnet")


OBJECTIVE_NAMES = ("t5", "bert", "electra", "xlnet")


def single_length(sequence_length: Union[int, Mapping[str, int]]) -> int:
  """One length for aligned inputs/targets (ints or seqio's {'inputs', 'targets'})."""
  if isinstance(sequence_length, int):
    return sequence_length
  lengths = {int(v) for k, v in sequence_length.items() if k in ("inputs", "targets") and v}
  if len(lengths) != 1:
    raise InputError(f"sequence_length {dict(sequence_length)}: inputs and targets must be "
                     "set and equal (masked inputs are aligned with their targets)")
  return lengths.pop()
