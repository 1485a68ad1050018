"""The prepared corpus: `protjax-data prepare`, the index-based order, batches
that do not depend on the host count or on where a run resumed, packing, the
SeqIO task path, and one-line errors for a damaged corpus."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks)
from protjax import trainer
from protjax.data import cli, config, prepared, prepared_pipeline
from protjax.data.config import DataConfig, ShardInfo
from protjax.data.readers import is_validation, read_fasta
from protjax.errors import InputError
from protjax.vocab import ProtBertVocabulary, ProtT5Vocabulary
from tasks import pretraining

T5 = ProtT5Vocabulary()
BERT = ProtBertVocabulary()
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fasta(directory, n_files=3, n_records=60, max_len=150, seed=0):
  """Synthetic FASTA files (multi-line records), ids unique across files."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  k = 0
  for f in range(n_files):
    lines = []
    for _ in range(n_records):
      seq = "".join(rng.choice(AA, rng.integers(20, max_len)))
      lines += [f">p{k} desc", seq[:60], seq[60:]]
      k += 1
    (directory / f"c_{f}.fasta").write_text("\n".join(l for l in lines if l) + "\n")
  return str(directory / "*.fasta")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small prepared corpus (180 records, lengths 20..150), made once."""
  root = tmp_path_factory.mktemp("prepared")
  prepared.prepare(_fasta(root / "fasta"), str(root / "corpus"), workers=1)
  return str(root / "corpus")


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory):
  """Short proteins (20..60 residues): several fit in a 128-token row."""
  root = tmp_path_factory.mktemp("short")
  prepared.prepare(_fasta(root / "fasta", n_files=1, n_records=300, max_len=60),
                   str(root / "corpus"), workers=1, validation_fraction=0.0)
  return str(root / "corpus")


def _batches(corpus_dir, n, task="uniref50_prepared_t5", **kw):
  args = dict(split="train", sequence_length=64, batch_size=8, seed=0,
              source_files=corpus_dir)
  args.update(kw)
  return list(itertools.islice(config.get_dataset(task, **args), n))


def _global(corpus_dir, step, hosts, start=None, global_batch=8, **kw):
  """The global batch at `step` from `hosts` hosts, each resuming at `start`."""
  start = step if start is None else start
  parts = []
  for h in range(hosts):
    run = _batches(corpus_dir, step - start + 1, batch_size=global_batch // hosts,
                   start_step=start, shard_info=ShardInfo(h, hosts), **kw)
    parts.append(run[-1])
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_prepare_splits_counts_and_resumes(tmp_path):
  pattern = _fasta(tmp_path / "fasta")
  out = str(tmp_path / "corpus")
  index = prepared.prepare(pattern, out, workers=2)
  records = [r for f in sorted((tmp_path / "fasta").iterdir()) for r in read_fasta(str(f))]
  assert index["splits"]["train"]["records"] + index["splits"]["validation"]["records"] == 180
  for split in prepared.SPLITS:
    c = prepared.PreparedCorpus(out, split)
    got = [prepared.decode_record(r) for r in c.read(np.arange(c.num_records))]
    want = [(i, s.encode()) for i, s in records if is_validation(i, 0.05) == (split != "train")]
    assert got == want  # file order, every record, the streaming split
    assert c.length_histogram().sum() == c.num_records
  # An interrupted run (no index, one file unfinished) converts only what is missing.
  os.remove(os.path.join(out, "index.json"))
  os.remove(os.path.join(out, "parts", "00001.json"))
  again = prepared.prepare(pattern, out, workers=1)
  assert again["resumed_files"] == 2 and again["splits"] == index["splits"]
  assert prepared.prepare(pattern, out)["resumed_files"] == 3  # already prepared
  with pytest.raises(InputError, match="other inputs"):
    prepared.prepare(pattern, out, validation_fraction=0.2)


def test_prepare_cli_and_its_one_line_errors(tmp_path, capsys):
  pattern = _fasta(tmp_path / "fasta", n_files=1)
  with pytest.raises(SystemExit) as e:
    cli.main(["prepare", "--input", pattern, "--output", str(tmp_path / "out")])
  assert e.value.code == 0 and "(60 in " in capsys.readouterr().out
  bad = tmp_path / "bad.fasta"
  bad.write_text(">ok\nMKTAYIAKQR\n>P12345 broken\nMKT9AY\n")
  with pytest.raises(SystemExit) as e:
    cli.main(["prepare", "--input", str(bad), pattern, "--output", str(tmp_path / "o2"),
              "--workers", "2"])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1
  assert str(bad) in err[0] and "record 'P12345'" in err[0] and "position 4" in err[0]
  assert not os.path.exists(tmp_path / "o2" / "index.json")


def test_permutation_is_a_bijection_per_seed_and_epoch():
  for n in (1, 2, 3, 7, 100, 1000, 4097):
    for k in (0, 1):
      p = prepared_pipeline.permute(np.arange(n), n, k)
      np.testing.assert_array_equal(np.sort(p), np.arange(n))
  a = prepared_pipeline.record_indices(np.arange(2000), 1000, 0, True)
  assert sorted(a[:1000]) == list(range(1000)) and sorted(a[1000:]) == list(range(1000))
  assert not np.array_equal(a[:1000], a[1000:])                      # a new order per epoch
  assert not np.array_equal(a, prepared_pipeline.record_indices(np.arange(2000), 1000, 1, True))
  np.testing.assert_array_equal(prepared_pipeline.record_indices(np.arange(5), 3, 0, False),
                                [0, 1, 2, 0, 1])


@pytest.mark.parametrize("task,pack", [("uniref50_prepared_t5", False),
                                       ("uniref50_prepared_bert", False),
                                       ("uniref50_prepared_t5", True)])
def test_batch_at_step_is_the_same_fresh_resumed_and_on_1_2_4_hosts(corpus, short_corpus,
                                                                     task, pack):
  # 173 train records, global batch 8: step 21 straddles the first epoch's end.
  src = short_corpus if pack else corpus
  kw = dict(task=task, pack=pack, sequence_length=128 if pack else 64)
  fresh = _batches(src, 23, **kw)
  for step in (0, 5, 21, 22):
    for hosts in (1, 2, 4):
      _equal(fresh[step], _global(src, step, hosts, **kw))
  # 2 hosts for steps 0-2, then 4 hosts resumed at step 3.
  for step in (3, 4):
    _equal(fresh[step], _global(src, step, 4, start=3, **kw))
  for step in (1, 2):
    _equal(fresh[step], _global(src, step, 2, start=0, **kw))
  # Far into the run: a resume at step 1,000,000 is an index computation.
  far = _batches(src, 2, start_step=1_000_000, **kw)
  _equal(far[1], _global(src, 1_000_001, 4, start=1_000_001, **kw))
  other_seed = _batches(src, 1, seed=1, **kw)[0]
  assert not np.array_equal(other_seed["encoder_input_tokens"], fresh[0]["encoder_input_tokens"])


def test_same_features_as_the_streaming_pipeline(corpus, tmp_path):
  fasta = _fasta(tmp_path / "fasta")
  for objective in ("t5", "bert", "electra"):
    for pack in (False, True):
      for kind in (None, "encoder"):
        kw = dict(split="train", sequence_length=64, batch_size=4, seed=0, pack=pack,
                  feature_converter=kind)
        a = next(config.get_dataset(f"uniref50_prepared_{objective}", source_files=corpus,
                                    **kw))
        b = next(config.get_dataset(f"protjax_sample_{objective}", source_files=fasta, **kw))
        assert list(a) == list(b)
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
            k: (v.shape, v.dtype) for k, v in b.items()}


def test_masking_rules(corpus):
  bs = _batches(corpus, 30, sequence_length=160, batch_size=16)
  inp = np.concatenate([b["encoder_input_tokens"] for b in bs])
  tgt = np.concatenate([b["decoder_target_tokens"] for b in bs])
  residues = (tgt >= 3) & (tgt <= 27)
  assert residues.sum() > 30_000 and abs((inp[residues] == 127).mean() - 0.15) < 0.01
  assert np.all(inp[~residues] == tgt[~residues]) and np.all((tgt == 1).sum(1) == 1)
  np.testing.assert_array_equal(bs[0]["decoder_input_tokens"][:, 1:], tgt[:16, :-1])
  # Targets are the corpus's proteins, cropped windows of the long ones.
  c = prepared.PreparedCorpus(corpus, "train")
  proteins = {prepared.decode_record(r)[1].decode() for r in c.read(np.arange(c.num_records))}
  assert T5.decode(tgt[0]).replace("</s>", "") in proteins
  window = [T5.decode(r).replace("</s>", "") for r in _batches(corpus, 5)[4]
            ["decoder_target_tokens"]]
  assert all(any(w in p for p in proteins) for w in window)
  b = _batches(corpus, 20, task="uniref50_prepared_bert", sequence_length=160, batch_size=16)
  inp = np.concatenate([x["encoder_input_tokens"] for x in b])
  tgt = np.concatenate([x["encoder_target_tokens"] for x in b])
  w = np.concatenate([x["encoder_loss_weights"] for x in b]).astype(bool)
  assert np.all(tgt[:, 0] == BERT.cls_id) and np.all((tgt == BERT.eos_id).sum(1) == 1)
  residues = (tgt >= BERT.residue_ids[0]) & (tgt <= BERT.residue_ids[-1])
  assert abs(w[residues].mean() - 0.15) < 0.01 and np.all(inp[~w] == tgt[~w])
  assert abs((inp[w] == BERT.mask_id).mean() - 0.8) < 0.03
  assert abs((inp[w] == tgt[w]).mean() - 0.1 - 0.1 / 20) < 0.03   # kept (or drawn itself)


def test_packing_segments_and_resume(short_corpus):
  bs = _batches(short_corpus, 6, sequence_length=128, pack=True)
  for b in bs:
    seg, pos, tgt = b["encoder_segment_ids"], b["encoder_positions"], b["decoder_target_tokens"]
    np.testing.assert_array_equal(seg, b["decoder_segment_ids"])
    for row in range(seg.shape[0]):
      ids = [s for s in np.unique(seg[row]) if s]
      assert len(ids) >= 2 and ids == list(range(1, len(ids) + 1))
      for s in ids:
        where = np.flatnonzero(seg[row] == s)
        assert np.all(np.diff(where) == 1)
        np.testing.assert_array_equal(pos[row, where], np.arange(len(where)))
        assert tgt[row, where[-1]] == 1 and (tgt[row, where] == 1).sum() == 1
      assert np.all(tgt[row][seg[row] == 0] == 0)
      assert np.all(b["decoder_input_tokens"][row][pos[row] == 0] == 0)
    masked = b["encoder_input_tokens"] == 127
    assert masked.any() and np.all(seg[masked] > 0)
  for a, b in zip(bs[3:], _batches(short_corpus, 3, sequence_length=128, pack=True,
                                   start_step=3)):
    _equal(a, b)


def test_one_epoch_for_evaluation_gives_every_host_the_same_steps(corpus):
  val = prepared.PreparedCorpus(corpus, "validation").num_records
  runs = [_batches(corpus, 100, split="validation", repeat=False, batch_size=1,
                   shard_info=ShardInfo(h, 2)) for h in range(2)]
  assert len(runs[0]) == len(runs[1]) == val // 2
  with pytest.raises(InputError, match="not a single complete batch"):
    _batches(corpus, 1, split="validation", repeat=False, batch_size=val + 1)


def test_data_config_trainer_source_and_seqio_task(corpus, monkeypatch):
  data = DataConfig(task_name="uniref50_prepared_t5", sequence_length=64, batch_size=8,
                    source_files=corpus)
  whole = _batches(corpus, 3)[2]
  source = trainer.PipelineSource(data)
  halves = [next(source(2, h, 2)) for h in range(2)]       # the trainer's own call
  _equal(whole, {k: np.concatenate([h[k] for h in halves]) for k in whole})
  monkeypatch.setitem(pretraining._source_files, "uniref50_prepared", [corpus])
  task = seqio.get_mixture_or_task("uniref50_prepared_t5")
  ds = task.get_dataset({"inputs": 32, "targets": 32}, split="train", shuffle=True, seed=3,
                        shard_info=seqio.ShardInfo(1, 2))
  for ex in itertools.islice(ds.as_numpy_iterator(), 5):
    assert ex["targets"][-1] == 1 and len(ex["targets"]) <= 32
    keep = ex["inputs"] != 127
    np.testing.assert_array_equal(ex["inputs"][keep], ex["targets"][keep])
  with pytest.raises(InputError, match="length_policy"):
    _batches(corpus, 1, length_policy="drop")


def test_bundled_sample_prepares_on_first_use(tmp_path, monkeypatch):
  monkeypatch.setenv("PROTJAX_CACHE_DIR", str(tmp_path))
  b = next(DataConfig(task_name="protjax_sample_prepared_bert", sequence_length=64,
                      batch_size=4).get_dataset("train"))
  assert b["encoder_input_tokens"].shape == (4, 64) and np.all(b["encoder_target_tokens"][:, 0] == 2)
  [made] = os.listdir(tmp_path)
  index = prepared.read_index(str(tmp_path / made))
  assert sum(index["splits"][s]["records"] for s in prepared.SPLITS) == 4145

_FRESH = """
import sys
from protjax.data.config import DataConfig
b = next(DataConfig(task_name="protjax_sample_prepared_t5", sequence_length=64,
                    batch_size=4).get_dataset("train", start_step=1_000_000))
assert b["encoder_input_tokens"].shape == (4, 64), b["encoder_input_tokens"].shape
heavy = sorted(m for m in ("tensorflow", "seqio", "jax") if m in sys.modules)
assert not heavy, f"imported {heavy} for a prepared corpus"
import tasks  # seqio not imported yet: `import tasks` registers the SeqIO tasks anyway
import seqio
task = seqio.get_mixture_or_task("protjax_sample_prepared_t5")
assert isinstance(task.output_features["inputs"].vocabulary, seqio.Vocabulary)
print("ok")
"""


def test_fresh_process_starts_a_prepared_corpus_without_tensorflow(tmp_path):
  """A prepared-corpus run builds its first batch (resumed far in) without
  importing TensorFlow, seqio or jax (a fresh process spent 8-13 s on them);
  `import tasks` afterwards still gives the SeqIO task."""
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3",
             PROTJAX_CACHE_DIR=str(tmp_path))
  out = subprocess.run([sys.executable, "-c", _FRESH], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0 and out.stdout.split() == ["ok"], out.stderr[-2000:]



def _cli_error(capsys, corpus_dir) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main(["--task", "uniref50_prepared_t5", "--source", corpus_dir, "--length", "64",
              "--num", "16"])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
  return err[0]


def test_damaged_corpus_is_one_line_and_exit_2(corpus, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:                      # an intact corpus works
    cli.main(["--task", "uniref50_prepared_t5", "--source", corpus, "--length", "64"])
  assert e.value.code == 0 and "input:" in capsys.readouterr().out
  assert "no index.json" in _cli_error(capsys, str(tmp_path))
  assert "no such prepared-corpus folder" in _cli_error(capsys, str(tmp_path / "none"))
  damaged = tmp_path / "damaged"
  shutil.copytree(corpus, damaged)
  index = json.loads((damaged / "index.json").read_text())
  shard = damaged / index["splits"]["train"]["shards"][0]["file"]
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])                  # truncated
  err = _cli_error(capsys, str(damaged))
  assert str(shard) in err and "truncated" in err
  corrupt = bytearray(data)                  # same size, every record's bytes overwritten
  corrupt[100:-300] = bytes(len(data) - 400)
  shard.write_bytes(bytes(corrupt))
  err = _cli_error(capsys, str(damaged))
  assert str(shard) in err and "corrupt" in err
  (damaged / "index.json").write_text("{not json")
  assert "not valid JSON" in _cli_error(capsys, str(damaged))


_HOST = """
import json, sys
import numpy as np
from protjax import trainer
from protjax.data.config import DataConfig
corpus, host, start, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
source = trainer.PipelineSource(DataConfig(task_name="uniref50_prepared_bert",
                                           sequence_length=64, batch_size=8,
                                           source_files=corpus))
it = source(start, host, 2)
np.savez(out, **{f"{k}_{s}": v for s in range(start, start + 3) for k, v in next(it).items()})
"""


def test_two_processes_read_one_global_batch(corpus, tmp_path):
  """Two local processes as the two hosts of a run resumed at step 19 (its
  steps 19-21 reach across the first epoch's end at step 21): together they
  give the one-host batches."""
  script = tmp_path / "host.py"
  script.write_text(_HOST)
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  outs = [str(tmp_path / f"h{h}.npz") for h in range(2)]
  procs = [subprocess.Popen([sys.executable, str(script), corpus, str(h), "19", outs[h]],
                            env=env, stderr=subprocess.PIPE, text=True) for h in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
  hosts = [np.load(o) for o in outs]
  one = _batches(corpus, 3, task="uniref50_prepared_bert", start_step=19)
  for s, whole in zip(range(19, 22), one):
    _equal(whole, {k: np.concatenate([h[f"{k}_{s}"] for h in hosts]) for k in whole})
