"""Paths that are URLs (gs:// on TPU VMs) through protjax.files, tested on
TensorFlow's in-memory `ram://` filesystem: not local, no network, and the
same tf.io.gfile road a gs:// path takes."""
from __future__ import annotations

import gzip
import pathlib

import pytest

from protjax import checkpoints, files, train as train_cli, trainer
from protjax.data import readers
from protjax.errors import InputError

REPO = pathlib.Path(__file__).parent.parent
SAMPLE = REPO / "protjax" / "data" / "sample"


def _put(url: str, data: bytes) -> None:
  files.makedirs(url.rsplit("/", 1)[0])
  with files.open_file(url, "wb") as f:
    f.write(data)


def test_files_layer_on_a_url():
  root = "ram://files_layer"
  files.makedirs(files.join(root, "a", "b"))
  assert files.isdir(files.join(root, "a")) and not files.isfile(files.join(root, "a"))
  files.write_text_atomic(files.join(root, "a", "b", "x.txt"), "text\n")
  assert files.isfile(f"{root}/a/b/x.txt") and files.glob(f"{root}/a/*/*.txt") == [
      f"{root}/a/b/x.txt"]
  with files.open_file(f"{root}/a/b/x.txt", "r") as f:
    assert f.read() == "text\n"
  with pytest.raises(InputError, match="output folder does not exist"):
    files.write_text_atomic(f"{root}/missing/x.txt", "text")
  files.rmtree(root)
  assert not files.exists(f"{root}/a/b/x.txt")
  assert files.join("gs://bucket/", "run", "config.gin") == "gs://bucket/run/config.gin"


def test_fasta_shards_and_globs_read_through_a_url():
  root = "ram://fasta_read"
  _put(f"{root}/a.fasta", b">p1\nMKV\n")
  _put(f"{root}/b.fasta.gz", gzip.compress(b">p2\nMKVL\n"))
  _put(f"{root}/c.fasta.gz", gzip.compress(b">p3\nMKVLA\n")[:-8])
  found = readers.resolve_files([f"{root}/*.fasta*"], "test")
  assert found == [f"{root}/a.fasta", f"{root}/b.fasta.gz", f"{root}/c.fasta.gz"]
  assert list(readers.read_fasta(found[0])) == [("p1", "MKV")]
  assert list(readers.read_fasta(found[1])) == [("p2", "MKVL")]
  with pytest.raises(InputError, match="c.fasta.gz: gzip data is truncated"):
    list(readers.read_fasta(found[2]))
  with pytest.raises(InputError, match="matches no file"):
    readers.resolve_files([f"{root}/none*.fasta"], "test")


@pytest.fixture
def clean_gin():
  import gin
  gin.clear_config()
  yield
  gin.clear_config()


def test_a_run_reads_its_fasta_and_writes_its_files_on_a_url(tmp_path, monkeypatch,
                                                              clean_gin):
  """The demo trains from FASTA shards on a URL, and its config.gin,
  model_config.json and TensorBoard events land in a model_dir on a URL.
  (Checkpoints are orbax's, whose gs:// road is TensorStore's own: here they
  go to a local folder, as no TensorStore driver knows ram://.)"""
  data, model_dir = "ram://run_data", "ram://runs/demo"
  for path in sorted(SAMPLE.glob("*.fasta")):
    _put(f"{data}/{path.name}", path.read_bytes())
  local = tmp_path / "checkpoints"
  monkeypatch.setattr(checkpoints, "checkpoint_dir", lambda d: (
      checkpoints.epath.Path(local) if d == model_dir else pytest.fail(d)))
  with pytest.raises(SystemExit) as exit_info:
    train_cli.main([
        f"--gin_file={REPO / 'gin_configs/runs/demo.gin'}",
        f"--gin.train.model_dir='{model_dir}'",
        f"--gin.DataConfig.source_files='{data}/*.fasta'",
        "--gin.train.train_steps=3", "--gin.train.log_every=1", "--gin.train.eval_every=0",
        "--gin.DataConfig.batch_size=8", "--gin.DataConfig.sequence_length=64"])
  assert exit_info.value.code == 0
  with files.open_file(f"{model_dir}/config.gin", "r") as f:
    assert f"DataConfig.source_files = '{data}/*.fasta'" in f.read()
  # What protjax-export / protjax-embed read first from a run in a bucket.
  from protjax import export, hf
  assert hf.read_json(f"{model_dir}/model_config.json")["family"] == "prott5"
  files.makedirs(f"{model_dir}/checkpoints")  # (orbax's own folder: local here)
  assert export.is_training_run(model_dir)
  loss = trainer.read_run_log(f"{model_dir}/tensorboard").scalars["train/loss"]
  assert sorted(loss) == [1, 2, 3]
  assert checkpoints.Checkpointer(model_dir).latest_step() == 3


# --- exports, embeddings and probes on URLs ------------------------------------------
# ram:// lives in one process, so the CLIs run in the test's own (as the run
# above does): their mains, exit codes and one-line errors, not a subprocess.
def _cli(main, argv):
  with pytest.raises(SystemExit) as exit_info:
    main([str(a) for a in argv])
  return exit_info.value.code


def _one_error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


@pytest.fixture(scope="module")
def tiny_t5():
  """(params, config): a random tiny ProtT5 encoder-decoder, float32 numpy."""
  import numpy as np
  from protjax.hf import t5 as hf_t5
  from protjax.models.t5 import get_config
  config = get_config("tiny")
  rng = np.random.default_rng(0)
  state = {k: rng.standard_normal(s).astype(np.float32) * 0.1
           for k, s in hf_t5.expected_hf_shapes(config, "encoder_decoder").items()}
  return hf_t5.from_hf_state_dict(state, config, "encoder_decoder"), config


def _assert_same_tree(a, b):
  import jax
  import numpy as np
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_export_and_import_write_and_read_urls(tmp_path, tiny_t5, monkeypatch, capsys):
  """protjax-export / protjax-import between URLs: params checkpoint -> HF ->
  params, each written locally and uploaded with config.json last; a failed
  upload leaves nothing; an existing output is refused in one line."""
  from protjax import export
  params, config = tiny_t5
  src = export.save_params_checkpoint(tmp_path / "src", params, config, "encoder_decoder")
  root = "ram://exports"
  local_tmp = tmp_path / "tmp"  # where exports to a URL are built
  local_tmp.mkdir()
  monkeypatch.setattr(files.tempfile, "tempdir", str(local_tmp))
  uploaded = []
  copy_file = files.copy_file
  monkeypatch.setattr(files, "copy_file", lambda s, d: (uploaded.append(d), copy_file(s, d)))
  assert _cli(export.export_main, ["--params_checkpoint", src, "--output", f"{root}/enc"]) == 0
  assert uploaded[-1] == f"{root}/enc/config.json" and len(uploaded) > 2
  assert any("/enc/params/" in u for u in uploaded)
  assert not any(local_tmp.iterdir())  # the local build is gone
  # A params checkpoint on a URL read back (downloaded), exported to HF on a URL.
  assert _cli(export.export_main, ["--params_checkpoint", f"{root}/enc", "--output",
                                   f"{root}/hf", "--format", "hf"]) == 0
  assert files.isfile(f"{root}/hf/model.safetensors")
  assert _cli(export.import_main, [f"{root}/hf", f"{root}/back"]) == 0
  back = export.load_model(f"{root}/back")
  assert back.kind == "encoder" and back.config == config
  _assert_same_tree(back.params, back.family.encoder_params(params))
  capsys.readouterr()
  # Bad input: one line, exit 2, nothing written.
  assert _cli(export.export_main, ["--params_checkpoint", src, "--output", f"{root}/hf"]) == 2
  assert f"{root}/hf: output directory exists" in _one_error_line(capsys)
  assert _cli(export.import_main, [f"{root}/missing", f"{root}/x"]) == 2
  assert f"{root}/missing: directory not found" in _one_error_line(capsys)
  assert not files.exists(f"{root}/x")
  # A message about a file of a downloaded model names the URL, not the download.
  with files.open_file(f"{root}/hf/config.json", "w") as f:
    f.write("{not json")
  assert _cli(export.import_main, [f"{root}/hf", f"{root}/x"]) == 2
  assert _one_error_line(capsys).startswith(f"error: {root}/hf/config.json: not valid JSON")
  # An upload that fails midway is removed, and so is the local build.
  def broken(s, d):
    if len(uploaded) > 3:
      raise OSError("connection reset")
    uploaded.append(d)
    copy_file(s, d)
  uploaded.clear()
  monkeypatch.setattr(files, "copy_file", broken)
  with pytest.raises(OSError, match="connection reset"):
    export.save_params_checkpoint(f"{root}/broken", params, config)
  assert not files.exists(f"{root}/broken") and not any(local_tmp.iterdir())


def test_embed_probe_and_featurize_outputs_on_urls(tmp_path, tiny_t5, fixtures_dir, capsys):
  """protjax-embed reads its model and FASTA from URLs and uploads its HDF5
  files; an interrupted run leaves OUT.partial on the URL and the rerun
  resumes it to the uninterrupted result. protjax-probe featurize / train /
  eval read and write URLs too."""
  import numpy as np
  from protjax import embed, embeddings_io, export
  from protjax.probes import cli as probe_cli
  params, config = tiny_t5
  root = "ram://embed"
  export.save_params_checkpoint(f"{root}/model", params, config)
  fasta = tmp_path / "proteins.fasta"  # one length bucket: one compile
  fasta.write_text("".join(f">p{i}\n{'MKTAYIAKQRQISFVKSHFSRQ'[i:]}\n" for i in range(6)))
  _put(f"{root}/in/proteins.fasta", fasta.read_bytes())
  assert _cli(embed.main, ["--model", f"{root}/model", "--fasta", f"{root}/in/proteins.fasta",
                           "--per_residue", f"{root}/out/res.h5", "--per_protein",
                           f"{root}/out/prot.h5", "--no_progress",
                           "--token_budget", 512]) == 2
  assert f"{root}/out: output folder does not exist" in _one_error_line(capsys)
  files.makedirs(f"{root}/out")
  argv = ["--model", f"{root}/model", "--fasta", f"{root}/in/proteins.fasta", "--per_residue",
          f"{root}/out/res.h5", "--per_protein", f"{root}/out/prot.h5", "--no_progress",
          "--token_budget", 512]
  assert _cli(embed.main, argv) == 0
  assert files.glob(f"{root}/out/*") == [f"{root}/out/prot.h5", f"{root}/out/res.h5"]
  embedder = embed.Embedder.from_directory(f"{root}/model", token_budget=512)
  assert embedder.model_name == "model"
  local = tmp_path / "res.h5"
  embed.embed_fasta(embedder, fasta, per_residue=local)
  want = embeddings_io.load_embeddings(local)
  got = embeddings_io.load_embeddings(f"{root}/out/res.h5")  # read by ranges, not downloaded
  assert sorted(got) == sorted(want) and len(want) == 6
  for pid in want:
    np.testing.assert_array_equal(got[pid], want[pid], err_msg=pid)
  # Interrupted after 4 proteins: the partial file is uploaded, and resumed.
  # (ram:// takes a path to exist where a longer name starts with it: glob.)
  out = f"{root}/out/again.h5"

  def stop(rid, seen=[]):
    seen.append(rid)
    if len(seen) == 4:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    embed.embed_fasta(embedder, f"{root}/in/proteins.fasta", per_residue=out, on_written=stop)
  assert files.glob(f"{out}*") == [f"{out}.partial"]
  with embeddings_io.EmbeddingFile(out + ".partial") as partial:
    assert len(partial) == 4
  summary = embed.embed_fasta(embedder, f"{root}/in/proteins.fasta", per_residue=out)
  assert (summary["skipped"], summary["embedded"]) == (4, 2)
  assert files.glob(f"{out}*") == [out]
  again = embeddings_io.load_embeddings(out)
  for pid in want:
    np.testing.assert_array_equal(again[pid], want[pid], err_msg=pid)
  # protjax-probe: features, a probe folder and a report, all on URLs.
  probes = "ram://probes"
  _put(f"{probes}/ss.csv", (fixtures_dir / "probes" / "tiny_ss.csv").read_bytes())
  assert _cli(probe_cli.main, ["featurize", "--kind", "onehot", f"{probes}/ss.csv",
                               f"{probes}/e.h5"]) == 0
  assert _cli(probe_cli.main, ["train", "--task", "ss3ss8", "--model", "logreg",
                               "--embeddings", f"{probes}/e.h5", "--labels",
                               f"{probes}/ss.csv", "--max-epochs", 2, "--quiet",
                               "--out", f"{probes}/probe"]) == 0
  assert files.glob(f"{probes}/probe/*") == [f"{probes}/probe/config.json",
                                              f"{probes}/probe/params.msgpack"]
  capsys.readouterr()
  assert _cli(probe_cli.main, ["train", "--task", "ss3ss8", "--embeddings", f"{probes}/e.h5",
                               "--labels", f"{probes}/ss.csv", "--quiet",
                               "--out", f"{probes}/probe"]) == 2
  assert f"{probes}/probe: probe folder exists" in _one_error_line(capsys)
  assert _cli(probe_cli.main, ["eval", "--probe", f"{probes}/probe", "--embeddings",
                               f"{probes}/e.h5", "--labels", f"{probes}/ss.csv",
                               "--bootstrap", 10, "--out", f"{probes}/report.json"]) == 0
  with files.open_file(f"{probes}/report.json", "r") as f:
    assert set(__import__("json").load(f)["metrics"]) == {"Q3", "Q8"}
  assert files.isfile(f"{probes}/report.md")
