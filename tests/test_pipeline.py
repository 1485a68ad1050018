"""The pretraining pipeline: features, determinism/resume, splits, shards, packing,
bad input, the seqio task path and the protjax-data CLI."""
from __future__ import annotations

import glob
import itertools
import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks)
from protjax.data import pipeline, sources
from protjax.errors import InputError
from protjax.vocab import ProtT5Vocabulary

T5 = ProtT5Vocabulary()
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _corpus(tmp_path, n_files=1, n_records=120, name="c", seed=0, max_len=150):
  """Synthetic FASTA files; lengths 20..max_len; ids unique across files."""
  rng = np.random.default_rng(seed)
  paths, k = [], 0
  for f in range(n_files):
    lines = []
    for _ in range(n_records):
      seq = "".join(rng.choice(AA, rng.integers(20, max_len)))
      lines += [f">{name}{k} some description", seq[:60], seq[60:]]
      k += 1
    p = tmp_path / f"{name}_{f}.fasta"
    p.write_text("\n".join(l for l in lines if l) + "\n")
    paths.append(str(p))
  return paths


def _batches(n, **kw):
  args = dict(split="train", sequence_length=64, batch_size=8, seed=0)
  args.update(kw)
  return list(itertools.islice(pipeline.get_dataset("protjax_sample_t5", **args), n))


def _ids(source, split="train", shard=None):
  ds = source.get_dataset(split, shuffle=False, shard_info=shard)
  return [r["id"].decode() for r in ds.as_numpy_iterator()]


def test_one_source_glob_string_equals_the_list_of_its_files(tmp_path):
  files = _corpus(tmp_path)
  pattern = str(tmp_path / "*.fasta")
  assert sorted(glob.glob(pattern)) == sorted(files)
  via_config = pipeline.DataConfig(sequence_length=64, batch_size=8, source_files=pattern)
  [a] = itertools.islice(via_config.get_dataset("train"), 1)
  [b] = _batches(1, source_files=files)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_t5_features_aligned(tmp_path):
  files = _corpus(tmp_path)
  [b] = _batches(1, source_files=files)
  assert set(b) == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                    "decoder_loss_weights"}
  for v in b.values():
    assert v.shape == (8, 64) and v.dtype == np.int32
  inp, tgt = b["encoder_input_tokens"], b["decoder_target_tokens"]
  # Same length, </s> at the same place, masked positions hold 127, others equal.
  assert np.array_equal(inp == 1, tgt == 1) and np.all((tgt == 1).sum(1) == 1)
  masked = inp == 127
  assert masked.any() and np.all(inp[~masked] == tgt[~masked])
  assert np.all((tgt[masked] >= 3) & (tgt[masked] <= 27))
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], tgt[:, :-1])
  assert np.all(b["decoder_input_tokens"][:, 0] == 0)
  np.testing.assert_array_equal(b["decoder_loss_weights"], (tgt != 0).astype(np.int32))
  # Targets are real proteins of the corpus (cropped windows of them).
  corpus = "".join(open(f).read().replace("\n", "") for f in files)
  assert T5.decode(tgt[0]).replace("</s>", "") in corpus


def test_masking_rate_over_many_examples(tmp_path):
  files = _corpus(tmp_path, n_records=400, max_len=500)
  bs = _batches(12, source_files=files, sequence_length=512, batch_size=32)
  inp = np.concatenate([b["encoder_input_tokens"] for b in bs])
  tgt = np.concatenate([b["decoder_target_tokens"] for b in bs])
  residues = (tgt >= 3) & (tgt <= 27)
  assert residues.sum() > 80_000
  assert abs((inp[residues] == 127).mean() - 0.15) < 0.005


def test_same_seed_step_identical_and_resume(tmp_path):
  files = _corpus(tmp_path)
  run = _batches(6, source_files=files)
  again = _batches(6, source_files=files)
  resumed = _batches(3, source_files=files, start_step=3)
  for a, b in zip(run, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(run[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other_seed = _batches(1, source_files=files, seed=1)[0]
  assert not np.array_equal(other_seed["decoder_target_tokens"], run[0]["decoder_target_tokens"])


def test_resume_many_epochs_in_jumps_to_its_epoch(tmp_path, monkeypatch):
  """Batches straddle epoch boundaries (20 records, batch 8); a resume far
  into the run gives the uninterrupted run's batches and reads a few epochs
  of records, not every record before the resume step."""
  files = _corpus(tmp_path, n_records=20)
  kw = dict(source_files=files, validation_fraction=0.0)
  run = _batches(12, **kw)
  for start in (5, 7, 11):  # record 40 = epoch 2 offset 0; 56 = epoch 2 offset 16
    for a, b in zip(run[start:], _batches(12 - start, start_step=start, **kw)):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  dropped = dict(kw, length_policy="drop", sequence_length=100)  # some proteins dropped
  run = _batches(8, **dropped)
  for a, b in zip(run[6:], _batches(2, start_step=6, **dropped)):
    np.testing.assert_array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"])
  # One epoch only (evaluation): a start past its end gives nothing.
  with pytest.raises(InputError, match="not a single complete batch"):
    _batches(1, start_step=3, repeat=False, **kw)
  # Epochs hold the same records in a new order.
  one = pipeline.get_spec("protjax_sample_t5").source.replace(patterns=files,
                                                              validation_fraction=0.0)
  ids = [[i.decode() for i, _ in one.epoch("train", e).as_numpy_iterator()] for e in (0, 1)]
  assert ids[0] != ids[1] and sorted(ids[0]) == sorted(ids[1])

  read = []
  records = sources._records
  def counting(*args):
    for ids_chunk, seqs in records(*args):
      read.append(len(ids_chunk))
      yield ids_chunk, seqs
  monkeypatch.setattr(sources, "_records", counting)
  far = _batches(2, start_step=10_000, **kw)  # record 80,000: epoch 4,000
  assert sum(read) < 10 * 20
  monkeypatch.undo()
  assert len(far) == 2 and far[0]["encoder_input_tokens"].shape == (8, 64)


def test_new_masks_every_epoch(tmp_path):
  # 8 records, batch 8, no shuffle: every step holds the same proteins, yet the
  # masks differ from step to step.
  files = _corpus(tmp_path, n_records=8)
  bs = _batches(3, source_files=files, shuffle=False, validation_fraction=0.0,
                sequence_length=256)  # no protein is cropped
  for b in bs[1:]:
    np.testing.assert_array_equal(b["decoder_target_tokens"], bs[0]["decoder_target_tokens"])
    assert not np.array_equal(b["encoder_input_tokens"], bs[0]["encoder_input_tokens"])


def test_splits_disjoint_deterministic(tmp_path):
  source = pipeline.FastaSource(_corpus(tmp_path, n_records=1000, max_len=30), name="c")
  train, val = set(_ids(source, "train")), set(_ids(source, "validation"))
  assert not train & val and len(train | val) == 1000
  assert 25 <= len(val) <= 75                              # ~5%
  assert val == {i for i in train | val if pipeline.is_validation(i, 0.05)}
  assert len(_ids(source.replace(validation_fraction=0.2), "validation")) > 150


@pytest.mark.parametrize("n_files,n_shards", [(1, 3), (4, 2), (3, 2)])
def test_shards_disjoint_and_cover(tmp_path, n_files, n_shards):
  source = pipeline.FastaSource(_corpus(tmp_path, n_files, n_records=40, max_len=30), name="c")
  everything = _ids(source)
  shards = [set(_ids(source, shard=seqio.ShardInfo(i, n_shards))) for i in range(n_shards)]
  for a, b in itertools.combinations(shards, 2):
    assert not a & b
  assert set().union(*shards) == set(everything)
  assert all(shards)


def test_shards_give_different_batches(tmp_path):
  files = _corpus(tmp_path, n_records=200)
  a = _batches(1, source_files=files, shard_info=seqio.ShardInfo(0, 2))[0]
  b = _batches(1, source_files=files, shard_info=seqio.ShardInfo(1, 2))[0]
  ta = {T5.decode(r) for r in a["decoder_target_tokens"]}
  tb = {T5.decode(r) for r in b["decoder_target_tokens"]}
  assert not ta & tb


def test_packing_segments(tmp_path):
  files = _corpus(tmp_path, n_records=200, max_len=60)
  bs = _batches(4, source_files=files, pack=True, sequence_length=128)
  for b in bs:
    seg, pos = b["encoder_segment_ids"], b["encoder_positions"]
    np.testing.assert_array_equal(seg, b["decoder_segment_ids"])
    tgt = b["decoder_target_tokens"]
    for row in range(seg.shape[0]):
      ids = [s for s in np.unique(seg[row]) if s]
      assert len(ids) >= 2                                 # short proteins really packed
      for s in ids:
        where = np.flatnonzero(seg[row] == s)
        assert np.all(np.diff(where) == 1)                 # one contiguous protein
        np.testing.assert_array_equal(pos[row, where], np.arange(len(where)))
        assert tgt[row, where[-1]] == 1 and (tgt[row, where] == 1).sum() == 1  # one </s>
      assert np.all(tgt[row][seg[row] == 0] == 0)
      # Decoder inputs restart at every protein.
      assert np.all(b["decoder_input_tokens"][row][pos[row] == 0] == 0)
    masked = b["encoder_input_tokens"] == 127
    assert masked.any() and np.all(seg[masked] > 0)


def test_packed_resume(tmp_path):
  files = _corpus(tmp_path, n_records=200, max_len=60)
  run = _batches(4, source_files=files, pack=True)
  resumed = _batches(2, source_files=files, pack=True, start_step=2)
  for a, b in zip(run[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_bert_encoder_features(tmp_path):
  files = _corpus(tmp_path)
  b = next(pipeline.get_dataset("protjax_sample_bert", split="train", sequence_length=64,
                                batch_size=8, seed=0, source_files=files))
  assert set(b) == {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights"}
  tgt, w = b["encoder_target_tokens"], b["encoder_loss_weights"]
  assert np.all(tgt[:, 0] == 2)                            # [CLS]
  assert np.all((tgt == 3).sum(1) == 1)                    # one [SEP]
  assert w.sum() > 0 and np.all(w[b["encoder_input_tokens"] != tgt] == 1)


def test_length_policies(tmp_path):
  p = tmp_path / "x.fasta"
  long = "".join(np.random.default_rng(1).choice(AA, 40_000))
  p.write_text(">long\n" + long + "\n" + "".join(f">s{i}\nMKTAYIAKQR\n" for i in range(20)))
  crop = _batches(3, source_files=[str(p)], sequence_length=64, batch_size=7,
                  validation_fraction=0.0, shuffle=False)
  tgts = [T5.decode(r).replace("</s>", "") for b in crop for r in b["decoder_target_tokens"]]
  window = [t for t in tgts if t != "MKTAYIAKQR"]
  assert len(window) == 1 and len(window[0]) == 63 and window[0] in long
  drop = _batches(2, source_files=[str(p)], sequence_length=64, batch_size=10,
                  length_policy="drop", validation_fraction=0.0, shuffle=False)
  tgts = {T5.decode(r) for b in drop for r in b["decoder_target_tokens"]}
  assert tgts == {"MKTAYIAKQR</s>"}


def test_bad_input_errors(tmp_path):
  with pytest.raises(InputError, match="no source files set for corpus 'uniref50'"):
    next(pipeline.get_dataset("uniref50_t5", split="train", sequence_length=64,
                              batch_size=2, seed=0))
  with pytest.raises(InputError, match="matches no file"):
    _batches(1, source_files=[str(tmp_path / "*.fasta")])
  bad = tmp_path / "bad.fasta"
  bad.write_text("".join(f">r{i}\nMKTAYIAKQR\n" for i in range(30)) + ">broken\nMK7T\n")
  with pytest.raises(InputError) as e:
    _batches(10, source_files=[str(bad)], validation_fraction=0.0)
  assert e.value.record == "broken" and e.value.position == 3
  # An empty split ends with an error instead of spinning forever on repeat.
  with pytest.raises(InputError, match="not a single complete batch"):
    _batches(1, source_files=_corpus(tmp_path, name="v"), split="validation",
             validation_fraction=0.0)
  with pytest.raises(InputError, match="not a single complete batch"):
    _batches(1, source_files=_corpus(tmp_path, n_records=3), batch_size=8, repeat=False)
  with pytest.raises(InputError, match="unknown task"):
    next(pipeline.get_dataset("nope_t5", split="train", sequence_length=64, batch_size=2,
                              seed=0))
  with pytest.raises(InputError, match="must be set and equal"):
    _batches(1, sequence_length={"inputs": 64, "targets": 32}, source_files=[str(bad)])


def test_sample_task_and_data_config():
  assert {f"{c}_{o}" for c in ("protjax_sample", "uniref50", "uniref100", "bfd")
          for o in ("t5", "bert", "electra")} <= set(seqio.TaskRegistry.names())
  cfg = pipeline.DataConfig(task_name="protjax_sample_t5", sequence_length=128, batch_size=4)
  b = next(cfg.get_dataset("validation"))
  assert b["encoder_input_tokens"].shape == (4, 128)
  assert (b["encoder_input_tokens"] == 127).any()
  # Validation ids never appear in train (hash split over the bundled sample).
  source = pipeline.get_spec("protjax_sample_t5").source
  val = _ids(source, "validation")
  assert 100 < len(val) < 320 and all(pipeline.is_validation(i, 0.05) for i in val)
  train = _ids(source, "train")
  assert len(train) + len(val) == 4145 and not set(train) & set(val)


def test_seqio_task_path():
  task = seqio.get_mixture_or_task("protjax_sample_t5")
  ds = task.get_dataset({"inputs": 32, "targets": 32}, split="validation", shuffle=False, seed=3)
  for ex in itertools.islice(ds.as_numpy_iterator(), 5):
    assert ex["inputs"].shape == ex["targets"].shape and len(ex["targets"]) <= 32
    assert ex["targets"][-1] == 1
    keep = ex["inputs"] != 127
    np.testing.assert_array_equal(ex["inputs"][keep], ex["targets"][keep])
  # Shuffled and sharded training examples through seqio's own Task API.
  shard = task.get_dataset({"inputs": 32, "targets": 32}, split="train", shuffle=True, seed=3,
                           shard_info=seqio.ShardInfo(1, 2))
  ex = next(shard.as_numpy_iterator())
  assert ex["targets"][-1] == 1 and (ex["inputs"] == 127).sum() < len(ex["inputs"])


def test_cli_prints_examples_and_errors(tmp_path, capsys):
  from protjax.data import cli  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as e:
    cli.main(["--task", "protjax_sample_t5", "--split", "validation", "--length", "48",
              "--num", "2"])
  out = capsys.readouterr().out
  assert e.value.code == 0
  assert out.count("input:") == 2 and out.count("target:") == 2 and "<extra_id_0>" in out
  with pytest.raises(SystemExit) as e:
    cli.main(["--task", "uniref50_t5", "--source", str(tmp_path / "none*.fa")])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1
  assert err[0].startswith("error: ") and "none*.fa" in err[0] and "matches no file" in err[0]
  bad = tmp_path / "bad.fa"
  bad.write_text(">ok\nMKTAYIAKQR\n>P12345 broken\nMKT9AY\n")
  with pytest.raises(SystemExit) as e:
    cli.main(["--source", str(bad), "--split", "validation", "--num", "1", "--length", "32"])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1
  assert str(bad) in err[0] and "record 'P12345'" in err[0] and "position 4" in err[0]


def test_rare_residue_switch(tmp_path):
  p = tmp_path / "rare.fasta"
  p.write_text(">u\nMUZOBK\n")
  kw = dict(source_files=[str(p)], batch_size=1, validation_fraction=0.0, mask_rate=0.0)
  b = _batches(1, **kw)[0]
  np.testing.assert_array_equal(b["encoder_input_tokens"], b["decoder_target_tokens"])  # rate 0
  mapped = b["decoder_target_tokens"][0, :7].tolist()
  kept = _batches(1, map_rare_residues=False, **kw)[0]["decoder_target_tokens"][0, :7].tolist()
  assert mapped == [19, 23, 23, 23, 23, 14, 1] and kept == [19, 26, 27, 25, 24, 14, 1]
