"""Preprocessors: masking statistics, alignment, determinism, crop, tokenise, pack."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from protjax.data import feature_converters, preprocessors
from protjax.data.preprocessors import make_objective
from protjax.vocab import ProtBertVocabulary, ProtT5Vocabulary

T5 = ProtT5Vocabulary()
BERT = ProtBertVocabulary()


def _residue_tokens(vocab, batch=256, length=512, seed=0):
  """`[batch, length]` random residue ids with a special at the end of each row."""
  rng = np.random.default_rng(seed)
  ids = vocab.residue_ids[:20]
  tokens = rng.choice(ids, size=(batch, length)).astype(np.int32)
  tokens[:, -1] = vocab.eos_id
  return tf.constant(tokens)


def _seed(step, purpose=preprocessors.PURPOSE_MASK, seed=0):
  return preprocessors.step_seed(seed, 0, step, purpose)


def test_t5_masking_rate_sentinel_and_target():
  tokens = _residue_tokens(T5)
  out = {k: v.numpy() for k, v in preprocessors.t5_denoise(tokens, _seed(0), T5).items()}
  tokens = tokens.numpy()
  masked = out["inputs"] != tokens
  residues = tokens != T5.eos_id
  rate = masked[residues].mean()
  assert abs(rate - 0.15) < 0.005, rate
  # Every changed position holds <extra_id_0> = 127, nothing else changes.
  assert np.all(out["inputs"][masked] == 127) and T5.mask_id == 127
  assert np.all(out["inputs"][~masked] == tokens[~masked])
  # Target = the full unmasked input; </s> never masked.
  np.testing.assert_array_equal(out["targets"], tokens)
  assert np.all(out["inputs"][:, -1] == T5.eos_id)
  np.testing.assert_array_equal(out["loss_weights"], masked.astype(np.int32))


def test_masks_per_row_and_per_step_independent():
  tokens = _residue_tokens(T5, batch=8, length=512)
  a = preprocessors.t5_denoise(tokens, _seed(5), T5)["inputs"].numpy()
  b = preprocessors.t5_denoise(tokens, _seed(5), T5)["inputs"].numpy()
  c = preprocessors.t5_denoise(tokens, _seed(6), T5)["inputs"].numpy()
  d = preprocessors.t5_denoise(tokens, _seed(5, seed=1), T5)["inputs"].numpy()
  np.testing.assert_array_equal(a, b)              # same (seed, step): identical
  assert (a != c).mean() > 0.1                     # other step: other masks
  assert (a != d).mean() > 0.1                     # other seed: other masks
  # Identical rows get different masks (randomness is per example).
  same = tf.tile(tokens[:1], [8, 1])
  rows = preprocessors.t5_denoise(same, _seed(0), T5)["inputs"].numpy()
  assert len({r.tobytes() for r in rows}) == 8


def test_padding_and_specials_never_masked():
  tokens = tf.constant([[3, 4, 5, 1, 0, 0, 0, 0]] * 500, tf.int32)
  out = preprocessors.t5_denoise(tokens, _seed(0), T5, rate=0.9)["inputs"].numpy()
  assert np.all(out[:, 3:] == tokens.numpy()[:, 3:])
  assert (out[:, :3] == 127).mean() > 0.8


@pytest.mark.parametrize("name,rate", [("bert", 0.15), ("electra", 0.25)])
def test_bert_style_80_10_10(name, rate):
  obj = make_objective(name)
  assert obj.mask_rate == rate
  tokens = _residue_tokens(BERT, batch=512)
  # [CLS] residues [SEP]
  tokens = tf.concat([tf.fill([512, 1], BERT.cls_id), tokens[:, 1:]], axis=1)
  out = {k: v.numpy() for k, v in obj.mask(tokens, _seed(0)).items()}
  tokens = tokens.numpy()
  sel = out["loss_weights"] == 1
  assert abs(sel[:, 1:-1].mean() - rate) < 0.005
  assert not sel[:, 0].any() and not sel[:, -1].any()   # [CLS] / [SEP] never selected
  np.testing.assert_array_equal(out["targets"], tokens)
  # Loss only at selected positions; unselected inputs unchanged.
  assert np.all(out["inputs"][~sel] == tokens[~sel])
  inp, tgt = out["inputs"][sel], tokens[sel]
  frac_mask = (inp == BERT.mask_id).mean()
  frac_random = ((inp != BERT.mask_id) & (inp != tgt)).mean()
  frac_keep = (inp == tgt).mean()
  assert abs(frac_mask - 0.8) < 0.01
  # A random residue equals the original 1 time in 20.
  assert abs(frac_random - 0.1 * 19 / 20) < 0.01
  assert abs(frac_keep - (0.1 + 0.1 / 20)) < 0.01
  random_ids = inp[(inp != BERT.mask_id) & (inp != tgt)]
  assert set(random_ids.tolist()) <= set(BERT.encode(preprocessors.STANDARD_RESIDUES))


def test_tokenize_matches_vocabulary_and_frames():
  seqs = tf.constant(["MKTAYIAKQR", "ubzo", "ACDEFGHIKLMNPQRSTVWYX"])
  t5 = preprocessors.tokenize(seqs, make_objective("t5")).to_list()
  assert t5[0] == T5.encode("MKTAYIAKQR") + [1]
  assert t5[1] == [T5.encode("X")[0]] * 4 + [1]          # rare residues -> X by default
  bert = preprocessors.tokenize(seqs, make_objective("bert")).to_list()
  assert bert[2] == [2] + BERT.encode("ACDEFGHIKLMNPQRSTVWYX") + [3]
  keep_rare = make_objective("t5", map_rare_residues=False)
  # U B Z O keep their own ids (O 25, U 26, Z 27, B 24) when the mapping is off.
  assert preprocessors.tokenize(seqs[1:2], keep_rare).to_list()[0] == [26, 24, 27, 25, 1]
  dense = preprocessors.pad_to(preprocessors.tokenize(seqs, make_objective("t5")), 32).numpy()
  assert dense.shape == (3, 32) and dense[0, 11:].sum() == 0


def test_random_crop_windows():
  seq = "".join(np.random.default_rng(0).choice(list("ACDEFGHIKLMNPQRSTVWY"), 40_000))
  seqs = tf.constant([seq] * 64 + ["MKT"])
  out = [s.decode() for s in preprocessors.random_crop(seqs, 511, _seed(0, 1)).numpy()]
  assert out[-1] == "MKT"
  starts = [seq.find(o) for o in out[:-1]]
  assert all(len(o) == 511 for o in out[:-1]) and all(s >= 0 for s in starts)
  assert len(set(starts)) > 50                     # windows spread over the protein
  again = preprocessors.random_crop(seqs, 511, _seed(0, 1)).numpy()
  assert [s.decode() for s in again] == out        # deterministic given the seed
  assert bool(preprocessors.keep_if_fits(tf.constant("M" * 511), 511))
  assert not bool(preprocessors.keep_if_fits(tf.constant("M" * 512), 511))


def test_pack_segments_never_shared():
  lengths = [5, 3, 9, 2, 7, 4, 6]
  ds = tf.data.Dataset.from_generator(
      lambda: ({"targets": np.full(n, i + 3, np.int32)} for i, n in enumerate(lengths)),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  rows = list(preprocessors.pack_dataset(ds, 12).as_numpy_iterator())
  seen = []
  for r in rows:
    for seg in set(r["targets_segment_ids"].tolist()) - {0}:
      where = np.flatnonzero(r["targets_segment_ids"] == seg)
      assert np.all(np.diff(where) == 1)                      # contiguous
      assert len(set(r["targets"][where].tolist())) == 1      # one protein per segment id
      np.testing.assert_array_equal(r["targets_positions"][where], np.arange(len(where)))
      seen.append(int(r["targets"][where][0]))
  assert sorted(seen) == [i + 3 for i in range(len(lengths))]  # every protein exactly once


def test_feature_converter_shift_respects_segments():
  targets = tf.constant([[5, 6, 1, 7, 8, 1, 0]])
  positions = tf.constant([[0, 1, 2, 0, 1, 2, 0]])
  seg = tf.constant([[1, 1, 1, 2, 2, 2, 0]])
  feats = {"inputs": targets, "targets": targets, "loss_weights": tf.zeros_like(targets)}
  out = feature_converters.convert(feats, "encdec", seg, positions)
  assert out["decoder_input_tokens"].numpy().tolist() == [[0, 5, 6, 0, 7, 8, 0]]
  assert out["decoder_loss_weights"].numpy().tolist() == [[1, 1, 1, 1, 1, 1, 0]]
  unpacked = feature_converters.convert(feats, "encdec")
  assert unpacked["decoder_input_tokens"].numpy().tolist() == [[0, 5, 6, 1, 7, 8, 1]]
  assert "encoder_segment_ids" not in unpacked
  enc = feature_converters.convert(feats, "encoder", seg, positions)
  assert set(enc) == {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights",
                      "encoder_segment_ids", "encoder_positions"}
  with pytest.raises(ValueError):
    feature_converters.convert(feats, "decoder")
