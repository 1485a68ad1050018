"""The TensorFlow-free NumPy data backend against the seqio one, and a whole
run (pretrain -> export -> embed -> probes) with TensorFlow and seqio unimportable."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from protjax.data import numpy_pipeline
from protjax.data.config import DataConfig, ShardInfo
from protjax.errors import InputError
from protjax.vocab import ProtBertVocabulary, ProtT5Vocabulary

T5 = ProtT5Vocabulary()
BERT = ProtBertVocabulary()
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(tmp_path, n_records=200, max_len=150, seed=0):
  rng = np.random.default_rng(seed)
  lines = []
  for k in range(n_records):
    lines += [f">r{k} desc", "".join(rng.choice(AA, rng.integers(20, max_len)))]
  path = tmp_path / "c.fasta"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _config(path, backend, **kw):
  args = dict(task_name="protjax_sample_t5", sequence_length=64, batch_size=8,
              source_files=path, backend=backend)
  args.update(kw)
  return DataConfig(**args)


def _take(cfg, n, split="train", **kw):
  return list(itertools.islice(cfg.get_dataset(split, **kw), n))


def test_same_features_as_the_seqio_backend(tmp_path):
  path = _corpus(tmp_path)
  for task, kind in (("protjax_sample_t5", "encdec"), ("protjax_sample_t5", "encoder"),
                     ("protjax_sample_bert", None)):
    [a] = _take(_config(path, "numpy", task_name=task, feature_converter=kind), 1)
    [b] = _take(_config(path, "seqio", task_name=task, feature_converter=kind), 1)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        k: (v.shape, v.dtype) for k, v in b.items()}


@pytest.mark.parametrize("task,target", [("protjax_sample_t5", "decoder_target_tokens"),
                                         ("protjax_sample_bert", "encoder_target_tokens")])
def test_validation_split_holds_the_same_proteins(tmp_path, task, target):
  # Long enough that nothing is cropped: both backends must yield exactly the
  # same held-out proteins (as token rows, framing included), in whatever order.
  path = _corpus(tmp_path, n_records=400)
  rows = {}
  for backend in ("numpy", "seqio"):
    batches = _take(_config(path, backend, task_name=task, sequence_length=160, batch_size=1,
                            validation_fraction=0.2), 10_000, "validation")
    rows[backend] = sorted(tuple(b[target][0]) for b in batches)
  assert 40 < len(rows["numpy"]) < 120
  assert rows["numpy"] == rows["seqio"]


def test_prott5_masking_rule(tmp_path):
  path = _corpus(tmp_path, max_len=300)
  batches = _take(_config(path, "numpy", sequence_length=128, batch_size=16), 30)
  residue = masked = 0
  for b in batches:
    inp, tgt = b["encoder_input_tokens"], b["decoder_target_tokens"]
    is_res = (tgt >= 3) & (tgt <= 27)
    sel = inp == T5.mask_id
    assert not (sel & ~is_res).any()                        # never </s> or padding
    np.testing.assert_array_equal(inp[~sel], tgt[~sel])     # the rest unchanged
    np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], tgt[:, :-1])
    assert (b["decoder_input_tokens"][:, 0] == 0).all()
    np.testing.assert_array_equal(b["decoder_loss_weights"], (tgt != 0).astype(np.int32))
    lengths = is_res.sum(1)
    assert (tgt[np.arange(len(tgt)), lengths] == T5.eos_id).all()  # </s> after the residues
    assert lengths.max() == 127                              # long proteins are cropped
    residue += is_res.sum()
    masked += sel.sum()
  assert abs(masked / residue - 0.15) < 0.01


def test_bert_masking_rule(tmp_path):
  """`[CLS] residues [SEP]`; 15% of residues selected, of those 80% -> [MASK],
  10% a random standard residue, 10% kept; loss weights exactly at the selected."""
  path = _corpus(tmp_path, max_len=300)
  batches = _take(_config(path, "numpy", task_name="protjax_sample_bert", sequence_length=128,
                          batch_size=16), 40)
  standard = set(BERT.encode("ACDEFGHIKLMNPQRSTVWY"))
  residue = selected = to_mask = kept = 0
  for b in batches:
    inp, tgt, w = b["encoder_input_tokens"], b["encoder_target_tokens"], b["encoder_loss_weights"]
    is_res = (tgt >= BERT.residue_ids[0]) & (tgt <= BERT.residue_ids[-1])
    sel = w == 1
    assert not (sel & ~is_res).any()                         # never [CLS], [SEP] or padding
    np.testing.assert_array_equal(inp[~sel], tgt[~sel])      # the rest unchanged
    assert (tgt[:, 0] == BERT.cls_id).all()
    lengths = is_res.sum(1)
    assert (tgt[np.arange(len(tgt)), lengths + 1] == BERT.eos_id).all()  # [SEP] after them
    assert lengths.max() == 126                               # long proteins are cropped
    changed = sel & (inp != tgt)
    assert set(inp[changed & (inp != BERT.mask_id)].tolist()) <= standard
    residue += is_res.sum()
    selected += sel.sum()
    to_mask += (sel & (inp == BERT.mask_id)).sum()
    kept += (sel & (inp == tgt)).sum()
  assert abs(selected / residue - 0.15) < 0.01
  assert abs(to_mask / selected - 0.8) < 0.02
  # Kept: the 10% left alone plus the random draws that hit the same residue (~1 in 20).
  assert abs(kept / selected - (0.1 + 0.1 / 20)) < 0.02


def test_deterministic_and_resumable(tmp_path):
  path = _corpus(tmp_path, n_records=50)  # ~6 train batches per epoch: crosses epochs
  cfg = _config(path, "numpy")
  full = _take(cfg, 20)
  again = _take(cfg, 20)
  resumed = _take(cfg, 7, start_step=13)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
  for a, b in zip(full[13:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other_seed = _take(DataConfig(**{**cfg.__dict__, "seed": 1}), 1)[0]
  assert not np.array_equal(other_seed["encoder_input_tokens"], full[0]["encoder_input_tokens"])


def test_hosts_read_disjoint_shards(tmp_path):
  path = _corpus(tmp_path, n_records=120)
  files = [path]
  seqs = [numpy_pipeline.load_split(files, "train", 0.05, i, 2) for i in (0, 1)]
  whole = numpy_pipeline.load_split(files, "train", 0.05)
  assert not set(seqs[0]) & set(seqs[1]) and sorted(seqs[0] + seqs[1]) == sorted(whole)
  [b] = _take(_config(path, "numpy"), 1, shard_info=ShardInfo(1, 2))
  assert b["encoder_input_tokens"].shape == (8, 64)


def test_unsupported_settings_are_one_line_errors(tmp_path):
  path = _corpus(tmp_path)
  for kw, needle in ((dict(task_name="protjax_sample_nonesuch"), "a '\\*_t5', '\\*_bert'"),
                     (dict(pack=True), "does not pack"),
                     (dict(source_files=()), "needs DataConfig.source_files"),
                     (dict(backend="arrow"), "unknown DataConfig.backend")):
    with pytest.raises(InputError, match=needle):
      _take(_config(path, kw.pop("backend", "numpy"), **kw), 1)
  with pytest.raises(InputError, match="matches no file"):
    _take(_config(str(tmp_path / "missing.fasta"), "numpy"), 1)
  with pytest.raises(InputError, match="not a single complete batch"):
    _take(_config(path, "numpy", batch_size=1000), 1, "validation", repeat=False)


BLOCK_TF = ("import sys, runpy; sys.modules['tensorflow'] = None; sys.modules['seqio'] = None; "
            "sys.argv = ['acid_test.py'] + sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")


def test_acid_test_runs_without_tensorflow(tmp_path):
  """A bare GPU box has no TensorFlow: the whole acid-test path must still run
  (NumPy data backend chosen automatically, vocabularies without seqio)."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from test_acid_test import make_data  # pylint: disable=import-outside-toplevel
  make_data(tmp_path / "data")
  script = os.path.join(REPO, "bench", "acid_test.py")
  argv = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
          "--work_dir", str(tmp_path / "work"),
          "--model_gin", os.path.join(REPO, "gin_configs", "models", "prott5_tiny.gin"),
          "--gin", "DataConfig.sequence_length = 64", "--gin", "DataConfig.batch_size = 8",
          "--gin", "DataConfig.validation_fraction = 0.2",
          "--gin", "train.train_steps = 3", "--gin", "train.eval_every = 0",
          "--gin", "CheckpointConfig.save_every = 1000",
          "--ss_train_chains", "10", "--loc_train_proteins", "20", "--ss_max_epochs", "1",
          "--loc_max_epochs", "2", "--folds", "2", "--poolings", "mean",
          "--tsne_perplexity", "5", "--embed_token_budget", "1024"]
  code = BLOCK_TF.replace("sys.argv[0]", repr(script))
  proc = subprocess.run([sys.executable, "-c", code] + argv, cwd=REPO, capture_output=True,
                        text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=import-outside-toplevel
  with open(tmp_path / "out" / "acid_test.json") as f:
    rep = json.load(f)
  assert rep["pretraining"]["data_config"]["backend"] == "numpy"
  assert rep["pretraining"]["final_step"] == 3
  assert 0 <= rep["acid_criterion"]["trained_q3"] <= 100
  assert "numpy input pipeline" in (tmp_path / "out" / "acid_test.md").read_text()
