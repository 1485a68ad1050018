"""Bad input and faults through the CLIs, as a user meets them.

Each case runs a console script in a subprocess and checks what the user
sees: one `error:` line naming the file, record, binding or step and the
problem, a non-zero exit, no traceback, nothing partial left behind and
nothing already written lost; a run that works prints protjax's lines and
nothing of TensorFlow's start-up. Every subprocess has a timeout, so a hang
fails the test instead of stalling the suite.
"""
import gzip
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PRETRAIN = FIXTURES / "data" / "pretrain_small.fasta"
DEEPLOC = {"10class": FIXTURES / "data" / "deeploc_10class_small.fasta",
           "10class_csv": FIXTURES / "data" / "deeploc_10class_small_labels.csv",
           "membrane": FIXTURES / "data" / "deeploc_membrane_small.fasta"}

# What TensorFlow, absl and XLA print when nobody asked them to.
NOISE = ("Traceback", "oneDNN", "cuda", "cuInit", "absl", "AutoGraph", "WARNING:tensorflow")


def _env():
  """The test session's environment, less its 8 fake devices (a user's
  machine has one CPU device; the tiny demo batch would not split 8 ways)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


def cli(entry_point, *args, timeout=60, umask=None):
  """A console script (`module:function`, as setup.py names it) in a
  subprocess, as a user runs it: the CompletedProcess."""
  module, function = entry_point.split(":")
  return subprocess.run(
      [sys.executable, "-c", f"import sys; from {module} import {function}; "
       f"sys.argv[0] = 'protjax'; {function}()", *map(str, args)],
      capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env(),
      preexec_fn=None if umask is None else (lambda: os.umask(umask)))


DATA = "protjax.data.cli:main"
TRAIN = "protjax.train:main"
EXPORT = "protjax.export:export_main"
EMBED = "protjax.embed:main"
PROBE = "protjax.probes.cli:main"


def one_error_line(proc, *expected):
  """Asserts exit status 2 and stderr of one `error:` line holding `expected`."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  for text in expected:
    assert str(text) in lines[0], lines[0]
  return lines[0]


def no_noise(text):
  found = [n for n in NOISE if n in text]
  assert not found, f"{found} in:\n{text[-3000:]}"


# --- FASTA input: damaged gzip, ids, binary files ---------------------------------

def _damaged_gzip(path, how):
  data = gzip.compress(PRETRAIN.read_bytes())
  if how == "truncated":
    data = data[:len(data) // 2]
  elif how == "overwritten":
    data = data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:]
  else:  # plain text named .gz
    data = PRETRAIN.read_bytes()
  path.write_bytes(data)
  return path


@pytest.mark.parametrize("how,problem", [
    ("truncated", "gzip data is truncated"),
    ("overwritten", "gzip data is corrupt"),
    ("plain", "named .gz but is not gzip data")])
def test_featurize_damaged_gzip_names_the_file(tmp_path, how, problem):
  fasta = _damaged_gzip(tmp_path / "x.fasta.gz", how)
  proc = cli(PROBE, "featurize", "--kind", "onehot", fasta, tmp_path / "out.h5")
  one_error_line(proc, fasta, problem)
  assert sorted(os.listdir(tmp_path)) == ["x.fasta.gz"]  # no out.h5, no out.h5.partial


@pytest.mark.parametrize("content,problem", [
    (b">ab\xffc desc\nMKTAYIAK\n", "line 1: record id has byte 0xff, which is not UTF-8"),
    (b">a/b\nMKTAYIAK\n>a_b\nMKTAYIAKQQ\n", "same dataset name 'a_b' as id 'a/b'"),
    (b"\x89HDF\r\n\x1a\n\x00\x00\x00\x00\x00\x08\x08\x00", "binary data, neither a FASTA nor a CSV"),
])
def test_featurize_refuses_ids_and_binary_files(tmp_path, content, problem):
  source = tmp_path / "in.fasta"
  source.write_bytes(content)
  proc = cli(PROBE, "featurize", "--kind", "onehot", source, tmp_path / "out.h5")
  line = one_error_line(proc, problem)
  assert "\\x" not in line  # no bytes of the file on the terminal
  assert sorted(os.listdir(tmp_path)) == ["in.fasta"]


@pytest.fixture
def damaged_gz(tmp_path):
  return _damaged_gzip(tmp_path / "trunc.fasta.gz", "truncated")


def test_protjax_data_names_damaged_gzip_and_a_clean_run_is_quiet(damaged_gz):
  """One line naming the file (it was TensorFlow's message without it); a
  run that works prints its examples and nothing of TensorFlow's."""
  proc = cli(DATA, "--task", "uniref50_t5", "--source", damaged_gz)
  one_error_line(proc, damaged_gz, "gzip data is truncated")
  ok = cli(DATA, "--num", "1", "--length", "32")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "# example 0" in ok.stdout
  no_noise(ok.stderr + ok.stdout)
  assert ok.stderr == ""


# protjax-data hung after its error line (1 run in 4): the failed tf.data
# iterator outlived the error into interpreter shutdown. Each bad FASTA runs
# ten times in one process (TensorFlow imported once; gc.freeze keeps the
# collection after each error from rescanning TensorFlow's own objects),
# checking that no iterator outlives an error; the process's exit is the
# teardown that hung.
LOOP = """
import gc, sys
from protjax import tf_setup
tf_setup.import_tensorflow()
from protjax.data import cli, pipeline
from tensorflow.python.data.ops import iterator_ops
pipeline.get_spec("uniref50_t5")
gc.collect()
gc.freeze()
for fasta in sys.argv[1:]:
  for run in range(10):
    try:
      cli.main(["--task", "uniref50_t5", "--source", fasta])
    except SystemExit as e:
      assert e.code == 2, e.code
    alive = sum(isinstance(o, iterator_ops.OwnedIterator) for o in gc.get_objects())
    assert alive == 0, f"{fasta} run {run}: {alive} tf.data iterators outlive the error"
print("done", flush=True)
"""
BAD_FASTAS = {"empty": ("", "no FASTA records (empty file?)"),
              "noseq": (">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\n>c\nMKTAYIAK\n",
                        "record 'b': record has no sequence"),
              "star": (">a\nMKTAYIAK*QRQISFVKSHFSRQ\n", "internal '*' stop codon")}


def test_protjax_data_bad_fasta_ten_times_each_never_hangs(tmp_path):
  files = []
  for name, (content, _) in BAD_FASTAS.items():
    files.append(tmp_path / f"{name}.fasta")
    files[-1].write_text(content)
  proc = subprocess.run([sys.executable, "-c", LOOP, *map(str, files)], capture_output=True,
                        text=True, timeout=60, cwd=REPO, env=_env())
  assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 30, proc.stderr[-3000:]
  for i, (fasta, (_, problem)) in enumerate(zip(files, BAD_FASTAS.values())):
    assert all(l.startswith(f"error: {fasta}") and problem in l
               for l in lines[10 * i:10 * i + 10]), lines[10 * i]


# --- protjax-train: gin values, SIGTERM, damaged checkpoints --------------------------

TINY = ["--gin_file=gin_configs/runs/demo.gin", "--gin.DataConfig.sequence_length=32",
        "--gin.DataConfig.batch_size=4", "--gin.train.log_every=1",
        "--gin.CheckpointConfig.save_every=1", "--gin.CheckpointConfig.keep=10"]


@pytest.mark.parametrize("binding,expected", [
    ("--gin.train.train_steps=twenty", "gin binding 'train.train_steps=twenty': 'twenty' "
     "is not a gin value"),
    ("--gin.train.model_dir=/somewhere/run", "--gin.train.model_dir=\"'/somewhere/run'\""),
    ("--gin.train.train_steps='abc'", "gin binding train.train_steps = 'abc': expected int")])
def test_train_bad_gin_value_is_one_line_and_writes_nothing(tmp_path, binding, expected):
  run = tmp_path / "run"
  proc = cli(TRAIN, *TINY, f"--gin.train.model_dir='{run}'", binding)
  one_error_line(proc, expected)
  assert not run.exists()


def test_train_bad_corpus_is_one_line_and_leaves_no_run_folder(tmp_path):
  """The error was buried in two TensorFlow tracebacks (72 lines), after the
  run folder had been made."""
  fasta = tmp_path / "bad.fasta"
  fasta.write_text(">a\nMKTAYIAK*QRQISFVKSHFSRQ\n")
  run = tmp_path / "run"
  proc = cli(TRAIN, *TINY, f"--gin.train.model_dir='{run}'",
             "--gin.DataConfig.task_name='uniref50_t5'",
             f"--gin.DataConfig.source_files='{fasta}'", timeout=120)
  one_error_line(proc, fasta, "record 'a', position 9: internal '*' stop codon")
  assert not run.exists()


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """A demo run (tiny shapes, an evaluation every step, the tf.data
  pipeline) stopped by SIGTERM once step 2 is logged: (run dir, process).
  A watchdog kills it if step 2 never comes."""
  run = tmp_path_factory.mktemp("train") / "run"
  proc = subprocess.Popen(
      [sys.executable, "-c", "from protjax.train import main; main()", *TINY,
       f"--gin.train.model_dir='{run}'", "--gin.train.train_steps=1000",
       "--gin.train.eval_every=1", "--gin.train.eval_steps=1"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
  watchdog = threading.Timer(180, proc.kill)
  watchdog.start()
  try:
    out = []
    for line in proc.stdout:
      out.append(line)
      if line.startswith("step 2/1000"):
        proc.send_signal(signal.SIGTERM)
        break
    rest, err = proc.communicate(timeout=120)
  finally:
    watchdog.cancel()
    proc.kill()
  return run, subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + rest, err)


def test_sigterm_stop_exits_75_and_prints_no_noise(stopped_run):
  run, proc = stopped_run
  assert proc.returncode == 75, proc.stderr[-3000:]
  assert "checkpoint saved" in proc.stdout
  assert "eval step 1:" in proc.stdout
  no_noise(proc.stdout + proc.stderr)
  assert len([p for p in os.listdir(run / "checkpoints") if p.isdigit()]) >= 2


def _damage(step_dir, how):
  if how == "truncated":
    data = max((p for p in (step_dir / "params").rglob("*") if p.is_file()
                and p.parent.name == "d"), key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
      f.truncate(100)
  else:
    (step_dir / "params" / "manifest.ocdbt").unlink()


def _copy_with_newest_damaged(run, tmp_path, how):
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  newest = max(int(p) for p in os.listdir(copy / "checkpoints") if p.isdigit())
  _damage(copy / "checkpoints" / str(newest), how)
  return copy, newest


@pytest.mark.parametrize("how", ["truncated", "no_manifest"])
def test_resume_falls_back_from_an_unreadable_step(stopped_run, tmp_path, how):
  run, _ = stopped_run
  copy, newest = _copy_with_newest_damaged(run, tmp_path, how)
  proc = cli(TRAIN, *TINY, f"--gin.train.model_dir='{copy}'",
             f"--gin.train.train_steps={newest + 1}", "--gin.train.eval_every=0",
             timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warning = proc.stderr.strip().splitlines()
  assert len(warning) == 1 and f"checkpoint step {newest} " in warning[0], proc.stderr
  assert f"resuming from step {newest - 1}" in warning[0]
  assert f"step {newest}/{newest + 1}" in proc.stdout  # it trained step `newest` again
  steps = sorted(os.listdir(copy / "checkpoints"))
  assert f"{newest}.unreadable" in steps and str(newest + 1) in steps and str(newest) in steps


@pytest.mark.parametrize("how,tool", [("truncated", EXPORT), ("no_manifest", EMBED)])
def test_export_and_embed_name_the_unreadable_step(stopped_run, tmp_path, how, tool):
  run, _ = stopped_run
  copy, newest = _copy_with_newest_damaged(run, tmp_path, how)
  out = tmp_path / "out"
  args = (["--model_dir", copy, "--output", out] if tool == EXPORT else
          ["--model", copy, "--fasta", FIXTURES / "embed" / "proteins.fasta",
           "--per_protein", tmp_path / "out.h5", "--no_progress"])
  proc = cli(tool, *args)
  one_error_line(proc, f"checkpoint step {newest} is unreadable",
                 "manifest.ocdbt is missing" if how == "no_manifest" else "OUT_OF_RANGE")
  assert sorted(os.listdir(tmp_path)) == ["run"]


def test_embed_damaged_gzip_names_the_file(stopped_run, damaged_gz):
  run, _ = stopped_run
  out = damaged_gz.parent / "out.h5"
  proc = cli(EMBED, "--model", run, "--fasta", damaged_gz, "--per_protein", out,
             "--no_progress")
  one_error_line(proc, damaged_gz, "gzip data is truncated")
  assert not out.exists() and not pathlib.Path(f"{out}.partial").exists()


# --- protjax-probe train: existing --out, permissions, several label sources -----------

@pytest.fixture(scope="module")
def deeploc_h5(tmp_path_factory):
  """One-hot embeddings of the two DeepLoc fixtures: {"10class": h5, "membrane": h5}."""
  work = tmp_path_factory.mktemp("deeploc")
  out = {}
  for name in ("10class", "membrane"):
    out[name] = work / f"{name}.h5"
    proc = cli(PROBE, "featurize", "--kind", "onehot", DEEPLOC[name], out[name])
    assert proc.returncode == 0, proc.stderr
  return out


def _train_location(out, h5, *extra, umask=None):
  return cli(PROBE, "train", "--task", "location", "--embeddings", h5["10class"],
             "--labels", DEEPLOC["10class"], "--labels-csv", DEEPLOC["10class_csv"],
             "--max-epochs", "2", "--val-fraction", "0.3", "--quiet", "--out", out, *extra,
             umask=umask)


def test_probe_train_refuses_an_existing_probe_and_honours_the_umask(deeploc_h5, tmp_path):
  out = tmp_path / "probe"
  first = _train_location(out, deeploc_h5, umask=0o027)
  assert first.returncode == 0, first.stderr
  assert out.stat().st_mode & 0o777 == 0o750  # mkdir's, not mkdtemp's 0700
  assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o640}
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  again = _train_location(out, deeploc_h5, "--seed", "5")
  one_error_line(again, out, "probe folder exists (pass --overwrite to replace it)")
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  replaced = _train_location(out, deeploc_h5, "--seed", "5", "--overwrite")
  assert replaced.returncode == 0, replaced.stderr
  assert {p.name: p.read_bytes() for p in out.iterdir()} != before
  assert sorted(os.listdir(tmp_path)) == ["probe"]


def test_location_probe_from_both_deeploc_files(deeploc_h5, tmp_path):
  """The 10-class FASTA (labels in its CSV) and the membrane-labelled FASTA in
  one run train both heads; the 3 sequences in both are merged; as a
  validation set, the membrane file's sequences leave training."""
  both = _train_location(tmp_path / "both", deeploc_h5, "--embeddings", deeploc_h5["membrane"],
                         "--labels", DEEPLOC["membrane"])
  assert both.returncode == 0, both.stderr
  assert "3 proteins given twice (same sequence) were merged" in both.stderr
  meta = json.loads((tmp_path / "both" / "config.json").read_text())
  assert meta["n_duplicates_merged"] == 3 and meta["n_conflicting_location"] == 0
  assert meta["n_train"] + meta["n_val"] == 9
  assert meta["n_train_membrane_labels"] > 0 and meta["n_train_location_labels"] > 0
  val = _train_location(tmp_path / "val", deeploc_h5, "--val-labels", DEEPLOC["membrane"],
                        "--val-embeddings", deeploc_h5["membrane"])
  assert val.returncode == 0, val.stderr
  meta = json.loads((tmp_path / "val" / "config.json").read_text())
  assert meta["n_val"] == 6 and meta["n_train"] == 3 and meta["n_excluded_overlap"] == 3
