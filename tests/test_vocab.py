"""Vocabularies: ids equal the released ProtT5 / ProtBert tokenizers' ids.

The expected tables are written out by hand from REFERENCE.md (not derived
from protjax.vocab), so a reordering in the code fails here.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from protjax.vocab import ProtBertVocabulary, ProtT5Vocabulary

# ProtT5 (Rostlab/prot_t5_xl_uniref50 spiece model): 0 <pad>, 1 </s>, 2 <unk>,
# 3..27 residues A L G V S R E D T I P K F Q N Y M H W C X B O U Z,
# then <extra_id_99> at 28 down to <extra_id_0> at 127.
PROTT5_EXPECTED = {
    "<pad>": 0, "</s>": 1, "<unk>": 2,
    "A": 3, "L": 4, "G": 5, "V": 6, "S": 7, "R": 8, "E": 9, "D": 10, "T": 11, "I": 12,
    "P": 13, "K": 14, "F": 15, "Q": 16, "N": 17, "Y": 18, "M": 19, "H": 20, "W": 21,
    "C": 22, "X": 23, "B": 24, "O": 25, "U": 26, "Z": 27,
    "<extra_id_99>": 28, "<extra_id_98>": 29, "<extra_id_50>": 77, "<extra_id_1>": 126,
    "<extra_id_0>": 127,
}

# ProtBert (Rostlab/prot_bert vocab.txt), 30 ids.
PROTBERT_EXPECTED = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "L", "A", "G", "V", "E", "S", "I", "K", "R", "D", "T", "P", "N", "Q", "F", "Y",
    "M", "H", "C", "W", "X", "U", "B", "Z", "O",
]


def test_prott5_table():
  v = ProtT5Vocabulary(map_rare_residues=False)
  assert v.vocab_size == 128
  tokens = v.tokens()
  assert len(tokens) == 128
  for tok, i in PROTT5_EXPECTED.items():
    assert tokens[i] == tok, (tok, i)
  assert tokens[28:] == [f"<extra_id_{k}>" for k in range(99, -1, -1)]
  assert (v.pad_id, v.eos_id, v.unk_id, v.mask_id) == (0, 1, 2, 127)
  assert v.sentinel_id(0) == 127 and v.sentinel_id(99) == 28
  residues = {t: i for t, i in PROTT5_EXPECTED.items() if len(t) == 1}
  assert v.encode("".join(residues)) == list(residues.values())


def test_protbert_table():
  v = ProtBertVocabulary(map_rare_residues=False)
  assert v.vocab_size == 30
  assert v.tokens() == PROTBERT_EXPECTED
  assert (v.pad_id, v.unk_id, v.cls_id, v.eos_id, v.mask_id) == (0, 1, 2, 3, 4)
  assert v.encode("LAGVESIKRDTPNQFYMHCWXUBZO") == list(range(5, 30))


@pytest.mark.parametrize("cls", [ProtT5Vocabulary, ProtBertVocabulary])
def test_round_trip_python_and_tf(cls):
  v = cls(map_rare_residues=False)
  seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWUZOBX"
  ids = v.encode(seq)
  assert len(ids) == len(seq)
  assert v.decode(ids) == seq
  tf_ids = v.encode_tf(tf.constant(seq)).numpy().tolist()
  assert tf_ids == ids
  assert v.decode_tf(tf.constant(ids)).numpy().decode() == seq
  # Hugging Face's space-separated input and lower case give the same ids.
  assert v.encode(" ".join(seq.lower())) == ids


def test_rare_residues_to_x_switchable():
  mapped, kept = ProtT5Vocabulary(), ProtT5Vocabulary(map_rare_residues=False)
  assert mapped.encode("UZOB") == [23, 23, 23, 23]
  assert kept.encode("UZOB") == [26, 27, 25, 24]
  bmapped, bkept = ProtBertVocabulary(), ProtBertVocabulary(map_rare_residues=False)
  assert bmapped.encode("UZOB") == [25, 25, 25, 25]
  assert bkept.encode("UZOB") == [26, 28, 29, 27]
  assert mapped.encode("ACDX") == kept.encode("ACDX")


def test_decode_stops_at_eos_and_drops_pad():
  v = ProtT5Vocabulary()
  assert v.decode([19, 14, 127, 1, 3, 3, 0, 0]) == "MK<extra_id_0></s>"
  assert v.decode(np.array([3, 0, 4])) == "AL"
  # Unknown characters -> <unk>; readers reject them before tokenising.
  assert v.encode("J") == [2]
