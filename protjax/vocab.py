"""Residue vocabularies, id-for-id identical to the released ProtTrans tokenizers.

Both implement `seqio.Vocabulary`'s interface and need no sentencepiece
model: a sequence is tokenised one residue per character. Upper-casing is a documented
normalisation; the rare residues U Z O B are mapped to X by default
(`map_rare_residues=False` keeps them), as ProtTrans does before tokenising.
Spaces are ignored, so the Hugging Face convention "M K T" encodes like "MKT".

Neither seqio nor TensorFlow is imported here: the classes stand on a small
plain-Python base with seqio.Vocabulary's interface (the TensorFlow methods
import TensorFlow when called), so embedding, export, the NumPy data
backend and the prepared-corpus pipeline start without them, and work where
they are not installed. `protjax.data.seqio_tasks` registers the classes as
virtual subclasses of `seqio.Vocabulary` when it builds SeqIO tasks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from protjax.tokenizer import (PROTBERT_RESIDUES, PROTBERT_SPECIALS, PROTT5_EXTRA_IDS,  # noqa: F401
                               PROTT5_RESIDUES, PROTT5_SPECIALS, RARE_RESIDUES, token_id)

if TYPE_CHECKING:  # annotations only: the TensorFlow methods import it when called
  import tensorflow as tf



class _PlainVocabulary:
  """`seqio.Vocabulary`'s interface without seqio: `extra_ids` sentinels
  after the base ids, `encode` -> list of ids, `encode_tf` (TensorFlow)."""

  def __init__(self, extra_ids: int = 0):
    self._extra_ids = extra_ids

  @property
  def extra_ids(self) -> int:
    return self._extra_ids

  @property
  def vocab_size(self) -> int:
    return self._base_vocab_size + self._extra_ids

  def encode(self, s: str) -> Sequence[int]:
    return self._encode(s)

  def encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self._encode_tf(s)


class ResidueVocabulary(_PlainVocabulary):
  """A one-character-per-token vocabulary: `specials` first, then `residues`."""

  def __init__(self, specials: Sequence[str], residues: str, *, pad_id: int,
               eos_id: int, unk_id: int, extra_ids: int = 0,
               map_rare_residues: bool = True):
    self._specials = tuple(specials)
    self._residues = residues
    self._pad = pad_id
    self._eos = eos_id
    self._unk = unk_id
    self.map_rare_residues = map_rare_residues
    self._residue_offset = len(self._specials)
    # Byte -> id lookup table: the same table drives the Python and TF paths.
    table = np.full(256, unk_id, dtype=np.int32)
    for i, r in enumerate(residues):
      table[ord(r)] = self._residue_offset + i
      table[ord(r.lower())] = self._residue_offset + i
    if map_rare_residues and "X" in residues:
      x_id = self._residue_offset + residues.index("X")
      for r in RARE_RESIDUES:
        table[ord(r)] = table[ord(r.lower())] = x_id
    self._byte_to_id = table
    super().__init__(extra_ids=extra_ids)

  # --- seqio.Vocabulary interface -----------------------------------------
  @property
  def _base_vocab_size(self) -> int:
    return len(self._specials) + len(self._residues)

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def unk_id(self) -> int:
    return self._unk

  def _encode(self, s: str) -> Sequence[int]:
    data = np.frombuffer(s.replace(" ", "").encode("latin-1", "replace"), np.uint8)
    return self._byte_to_id[data].tolist()

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> string, stopping after `</s>`; sentinels keep their names."""
    ids = [int(i) for i in ids]
    if self._eos in ids:
      ids = ids[: ids.index(self._eos) + 1]
    return self._decode(ids)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self._decode_tf(ids)

  def _decode(self, ids: Sequence[int]) -> str:
    return "".join(self.id_to_token(int(i)) for i in ids if int(i) != self._pad)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    s = tf.strings.regex_replace(s, " ", "")
    data = tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int32)
    return tf.gather(tf.constant(self._byte_to_id), data)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tokens = tf.constant([self.id_to_token(i) for i in range(self.vocab_size)])
    ids = tf.boolean_mask(ids, tf.not_equal(ids, self._pad))
    return tf.strings.reduce_join(tf.gather(tokens, ids), axis=-1)

  # --- token names ----------------------------------------------------------
  def id_to_token(self, i: int) -> str:
    """The token string of id `i` (specials, residues, `<extra_id_N>`)."""
    if i < self._residue_offset:
      return self._specials[i]
    if i < self._base_vocab_size:
      return self._residues[i - self._residue_offset]
    if i < self.vocab_size:
      return f"<extra_id_{self.vocab_size - 1 - i}>"
    raise ValueError(f"id {i} outside the vocabulary of {self.vocab_size}")

  def tokens(self) -> list[str]:
    """All token strings, index = id."""
    return [self.id_to_token(i) for i in range(self.vocab_size)]

  def token_id(self, token: str) -> int:
    """The id of a token string (a special such as `[CLS]`, or a residue)."""
    return token_id(self.tokens(), token)

  def sentinel_id(self, k: int) -> int:
    """Id of `<extra_id_k>`."""
    if not 0 <= k < self.extra_ids:
      raise ValueError(f"no <extra_id_{k}> in a vocabulary with {self.extra_ids} extra ids")
    return self.vocab_size - 1 - k

  @property
  def residue_ids(self) -> np.ndarray:
    """Ids of the residue tokens (what random replacement may draw from)."""
    return np.arange(self._residue_offset, self._base_vocab_size, dtype=np.int32)

  def __eq__(self, other):
    return (type(self) is type(other) and self._specials == other._specials
            and self._residues == other._residues
            and self.extra_ids == other.extra_ids
            and self.map_rare_residues == other.map_rare_residues)

  def __hash__(self):
    return hash((self._specials, self._residues, self.extra_ids, self.map_rare_residues))


class ProtT5Vocabulary(ResidueVocabulary):
  """The released ProtT5 tokenizer: 128 ids, `</s>` is the only end token."""

  def __init__(self, map_rare_residues: bool = True):
    super().__init__(PROTT5_SPECIALS, PROTT5_RESIDUES, pad_id=0, eos_id=1, unk_id=2,
                     extra_ids=PROTT5_EXTRA_IDS, map_rare_residues=map_rare_residues)

  @property
  def mask_id(self) -> int:
    """ProtT5 replaces every masked residue by `<extra_id_0>` (id 127)."""
    return self.sentinel_id(0)


class ProtBertVocabulary(ResidueVocabulary):
  """The released ProtBert tokenizer: 30 ids, sequences are `[CLS] ... [SEP]`."""

  def __init__(self, map_rare_residues: bool = True):
    super().__init__(PROTBERT_SPECIALS, PROTBERT_RESIDUES, pad_id=0, eos_id=3, unk_id=1,
                     map_rare_residues=map_rare_residues)

  cls_id = 2
  mask_id = 4


