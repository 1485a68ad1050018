"""What a model needs to turn a protein into ids: its token list and framing tokens.

No TensorFlow and no seqio here (unlike `protjax.vocab`, whose vocabularies
feed the data pipeline), so embedding, export and import start fast and run
where TensorFlow is not installed. The token tables below are the released
ProtTrans tokenizers'; `protjax.vocab` builds its seqio vocabularies from them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RARE_RESIDUES = "UZOB"

# ProtT5: 0 <pad>, 1 </s>, 2 <unk>, 3..27 residues, then 100 sentinels with
# <extra_id_99> at 28 down to <extra_id_0> at 127 (seqio's sentinel layout).
PROTT5_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
PROTT5_SPECIALS = ("<pad>", "</s>", "<unk>")
PROTT5_EXTRA_IDS = 100

# ProtBert: 5 specials then 25 residues in the released order.
PROTBERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PROTBERT_RESIDUES = "LAGVESIKRDTPNQFYMHCWXUBZO"


def prott5_tokens() -> list[str]:
  """The 128 ProtT5 tokens by id."""
  sentinels = [f"<extra_id_{k}>" for k in range(PROTT5_EXTRA_IDS - 1, -1, -1)]
  return list(PROTT5_SPECIALS) + list(PROTT5_RESIDUES) + sentinels


def protbert_tokens() -> list[str]:
  """The 30 ProtBert tokens by id."""
  return list(PROTBERT_SPECIALS) + list(PROTBERT_RESIDUES)


def token_id(tokens: Sequence[str], token: str) -> int:
  """Index of `token` in a vocabulary's token list; ValueError if absent."""
  try:
    return list(tokens).index(token)
  except ValueError:
    raise ValueError(f"the vocabulary has no {token!r} token") from None


class TokenListVocabulary:
  """A model's residue vocabulary as a token list, with its framing tokens.

  What embedding needs from any family: ids for residues, and the special
  tokens put around them (ProtT5: `</s>` after; ProtBert: `[CLS]` before,
  `[SEP]` after). Built from the family's released vocabulary, or read from a
  model directory: protein BERT models in the wild order their residues
  differently from ProtBert (e.g. five specials, then the 20 standard
  residues alphabetically, 25 ids). Every one-letter upper-case token is a
  residue; a residue the list lacks becomes the unknown token, as a Hugging
  Face tokenizer would make it; U Z O B become X when the list has X (the
  ProtTrans convention, as `ResidueVocabulary` does by default).

  Attributes:
    prefix_ids, suffix_ids: ids put before / after the residues.
    pad_id, unk_id: padding and unknown ids.
  """

  def __init__(self, tokens: Sequence[str], *, unk_token: str, pad_token: str,
               prefix: Sequence[str] = (), suffix: Sequence[str] = (),
               map_rare_residues: bool = True):
    self._tokens = tuple(tokens)
    self._names = dict(unk_token=unk_token, pad_token=pad_token, prefix=list(prefix),
                       suffix=list(suffix))
    self.unk_id = token_id(self._tokens, unk_token)
    self.pad_id = token_id(self._tokens, pad_token)
    self.prefix_ids = tuple(token_id(self._tokens, t) for t in prefix)
    self.suffix_ids = tuple(token_id(self._tokens, t) for t in suffix)
    table = np.full(256, self.unk_id, dtype=np.int32)
    for i, t in enumerate(self._tokens):
      if len(t) == 1 and "A" <= t <= "Z":
        table[ord(t)] = table[ord(t.lower())] = i
    if map_rare_residues and "X" in self._tokens:
      for r in RARE_RESIDUES:
        table[ord(r)] = table[ord(r.lower())] = self._tokens.index("X")
    self._byte_to_id = table

  @classmethod
  def from_dict(cls, d: dict) -> "TokenListVocabulary":
    """Inverse of `to_dict` (the `vocabulary` entry of a params checkpoint)."""
    return cls(d["tokens"], unk_token=d["unk_token"], pad_token=d["pad_token"],
               prefix=d.get("prefix", ()), suffix=d.get("suffix", ()))

  def to_dict(self) -> dict:
    """JSON-able: the tokens by id and the names of the special tokens."""
    return dict(self._names, tokens=list(self._tokens))

  @property
  def vocab_size(self) -> int:
    return len(self._tokens)

  def encode(self, s: str) -> list[int]:
    """Residues -> ids (spaces ignored), no framing tokens."""
    data = np.frombuffer(s.replace(" ", "").encode("latin-1", "replace"), np.uint8)
    return self._byte_to_id[data].tolist()

  def frame(self, s: str) -> np.ndarray:
    """Residues -> int32 ids with the framing tokens: `[prefix + len(s) + suffix]`."""
    return np.asarray(list(self.prefix_ids) + self.encode(s) + list(self.suffix_ids),
                      np.int32)

  def tokens(self) -> list[str]:
    return list(self._tokens)

  def token_id(self, token: str) -> int:
    return token_id(self._tokens, token)

  def __eq__(self, other):
    return isinstance(other, TokenListVocabulary) and self.to_dict() == other.to_dict()
