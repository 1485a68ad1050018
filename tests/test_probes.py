"""Probe models, training (learns a synthetic rule), save/load, CLI and bad input."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax import embeddings_io as eio
from protjax import featurize
from protjax.probes import cli
from protjax.probes import data as pdata
from protjax.probes import models
from protjax.probes import train as ptrain

AA = "ACDEFGHIKLMNPQRSTVWY"
HELIX, STRAND = set("AELMQKR"), set("VIYFWT")


def _ss_labels(seq):
  """A learnable local rule: the state depends on the residue and its left neighbour."""
  d3, d8 = [], []
  for i, c in enumerate(seq):
    prev = seq[i - 1] if i else "G"
    if c in HELIX and prev != "P":
      d3.append("H"); d8.append("G" if prev == "G" else "H")
    elif c in STRAND:
      d3.append("E"); d8.append("E")
    else:
      d3.append("C"); d8.append("T" if c in "GN" else "C")
  return d3, d8


def _write_ss_csv(path, n, seed, min_len=15, max_len=60):
  rng = np.random.default_rng(seed)
  rows = ["seq, dssp3, dssp8, disorder, cb513_mask"]
  recs = []
  for i in range(n):
    seq = "".join(rng.choice(list(AA), rng.integers(min_len, max_len)))
    d3, d8 = _ss_labels(seq)
    dis = ["1.0"] * len(seq)
    dis[0] = "0.0"
    rows.append(",".join([" ".join(seq), " ".join(d3), " ".join(d8), " ".join(dis),
                          " ".join(["1.0"] * len(seq))]))
    recs.append((str(i), seq))
  path.write_text("\n".join(rows) + "\n")
  return recs


@pytest.fixture(scope="module")
def ss_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("ss")
  recs = _write_ss_csv(d / "train.csv", 160, seed=0)
  featurize.featurize_records("onehot", recs, d / "train.h5")
  recs = _write_ss_csv(d / "test.csv", 40, seed=1)
  featurize.featurize_records("onehot", recs, d / "test.h5")
  featurize.featurize_records("blosum62", recs, d / "test_blosum.h5")
  return d


FAST = ptrain.TrainConfig(max_epochs=12, patience=3, batch_tokens=2048, val_fraction=0.15,
                          learning_rate=3e-3)


@pytest.fixture(scope="module")
def cnn_probe(ss_files, tmp_path_factory):
  out = tmp_path_factory.mktemp("probe") / "cnn"
  probe = ptrain.train_residue_probe(ss_files / "train.h5", ss_files / "train.csv",
                                     out_dir=out, config=FAST, progress=False)
  return probe, out


def test_cnn_probe_learns_well_above_majority(ss_files, cnn_probe):
  probe, _ = cnn_probe
  report = ptrain.evaluate(probe, ss_files / "test.h5", ss_files / "test.csv")
  data = pdata.load_residue_set(ss_files / "test.h5", ss_files / "test.csv")
  t3 = np.concatenate([t[m] for t, m in zip(data.dssp3, data.score_mask)])
  t8 = np.concatenate([t[m] for t, m in zip(data.dssp8, data.score_mask)])
  majority3 = 100 * np.bincount(t3).max() / t3.size
  majority8 = 100 * np.bincount(t8).max() / t8.size
  q3, q8 = report["metrics"]["Q3"], report["metrics"]["Q8"]
  assert q3["accuracy"] > majority3 + 30, (q3["accuracy"], majority3)
  assert q8["accuracy"] > majority8 + 30, (q8["accuracy"], majority8)
  assert 0 < q3["se"] < 5
  assert q3["n_residues"] == sum(int(m.sum()) for m in data.score_mask)
  assert probe.meta["history"][-1]["epoch"] <= FAST.max_epochs


def test_standardized_residue_probe_ignores_feature_scale(ss_files, tmp_path):
  """standardize_residues: a per-feature affine change of the embeddings (scales
  1e-2 to 1e3, offsets up to 1e2) leaves training and predictions unchanged,
  and the saved probe applies the same standardisation."""
  import dataclasses
  data = pdata.load_residue_set(ss_files / "train.h5", ss_files / "train.csv")
  rng = np.random.default_rng(0)
  scale = 10.0 ** rng.uniform(-2, 3, data.dim)
  offset = rng.uniform(-100, 100, data.dim)
  warped = dataclasses.replace(
      data, features=[(np.asarray(f, np.float64) * scale + offset).astype(np.float32)
                      for f in data.features])
  mean, std = pdata.residue_moments(warped)
  stacked = np.concatenate(warped.features).astype(np.float64)
  np.testing.assert_allclose(mean, stacked.mean(0), rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(std, stacked.std(0) + 1e-6, rtol=1e-4, atol=1e-4)
  config = ptrain.TrainConfig(max_epochs=3, batch_tokens=2048, standardize_residues=True)
  tr, va = pdata.split_indices(len(data), 0.15, 0)
  plain = ptrain.fit_residue(data.subset(tr), data.subset(va), config=config, progress=False)
  probe = ptrain.fit_residue(warped.subset(tr), warped.subset(va), config=config,
                             progress=False)
  for a, b in zip(plain.meta["history"], probe.meta["history"]):
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)
  # Without standardisation the same warp changes training beyond recognition.
  raw = ptrain.fit_residue(warped.subset(tr), warped.subset(va), progress=False,
                           config=dataclasses.replace(config, standardize_residues=False))
  assert raw.meta["history"][-1]["val_loss"] != pytest.approx(
      plain.meta["history"][-1]["val_loss"], rel=0.05)
  probe.save(tmp_path / "p")
  loaded = ptrain.load_probe(tmp_path / "p")
  np.testing.assert_array_equal(loaded.state["input_std"], probe.state["input_std"])
  agree = [np.mean(x == y) for x, y in zip(ptrain.predict_residues(loaded, warped)["dssp3"],
                                          ptrain.predict_residues(plain, data)["dssp3"])]
  assert np.mean(agree) > 0.99


def test_saved_probe_round_trips_and_is_deterministic(ss_files, cnn_probe):
  probe, out = cnn_probe
  assert sorted(os.listdir(out)) == ["config.json", "params.msgpack"]
  loaded = ptrain.load_probe(out)
  data = pdata.load_residue_set(ss_files / "test.h5", ss_files / "test.csv")
  a = ptrain.predict_residues(probe, data)
  b = ptrain.predict_residues(loaded, data)
  for x, y in zip(a["dssp8"], b["dssp8"]):
    np.testing.assert_array_equal(x, y)
  # Same seed, same data -> the same parameters.
  again = ptrain.train_residue_probe(ss_files / "train.h5", ss_files / "train.csv",
                                     config=ptrain.TrainConfig(
                                         max_epochs=1, batch_tokens=2048, val_fraction=0.15),
                                     progress=False)
  again2 = ptrain.train_residue_probe(ss_files / "train.h5", ss_files / "train.csv",
                                      config=ptrain.TrainConfig(
                                          max_epochs=1, batch_tokens=2048, val_fraction=0.15),
                                      progress=False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.state, again2.state)


@pytest.mark.parametrize("name", sorted(models.RESIDUE_MODELS))
def test_residue_models_ignore_padding(name):
  """A chain's logits do not depend on how much padding its batch has."""
  module = models.RESIDUE_MODELS[name]()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 9, 5)).astype(np.float32)
  params = module.init(jax.random.PRNGKey(0), jnp.asarray(x), jnp.ones((1, 9)))
  out = module.apply(params, jnp.asarray(x), jnp.ones((1, 9)))
  xp = np.concatenate([x, rng.normal(size=(1, 7, 5)).astype(np.float32)], 1)  # junk pad
  mp = np.concatenate([np.ones((1, 9)), np.zeros((1, 7))], 1)
  outp = module.apply(params, jnp.asarray(xp), jnp.asarray(mp))
  for h, n in models.RESIDUE_HEADS:
    assert out[h].shape == (1, 9, n)
    np.testing.assert_allclose(out[h], outp[h][:, :9], atol=1e-5)


def test_cnn_architecture_matches_reference():
  module = models.ResidueCNN()
  p = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 1024)), jnp.ones((1, 8)))["params"]
  assert p["conv"]["kernel"].shape == (7, 1024, 32)
  assert p["dssp3"]["kernel"].shape == (7, 32, 3)
  assert p["dssp8"]["kernel"].shape == (7, 32, 8)
  pl = models.ResidueBiLSTM().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 4)),
                                   jnp.ones((1, 8)))["params"]
  assert pl["fnn"]["hidden"]["kernel"].shape == (32, 32)  # 16 + 16 concatenated


@pytest.mark.parametrize("name", ["logreg", "bilstm"])
def test_alternative_probes_train(ss_files, name):
  probe = ptrain.train_residue_probe(
      ss_files / "train.h5", ss_files / "train.csv", model=name,
      config=ptrain.TrainConfig(max_epochs=2, batch_tokens=2048, val_fraction=0.15,
                                learning_rate=1e-2), progress=False)
  h = probe.meta["history"]
  assert probe.meta["model"] == name and h[-1]["train_loss"] < h[0]["train_loss"] * 1.5
  assert h[-1]["val_q3"] > 45  # above the ~38 % majority after two epochs


# --- per-protein ------------------------------------------------------------------
def _write_loc_fasta(path, n, seed):
  """Location given by an enriched residue; membrane by hydrophobic content."""
  rng = np.random.default_rng(seed)
  marks = "KDWCPGHNMY"
  lines = []
  recs = []
  for i in range(n):
    loc = i % 10
    mem = "M" if i % 3 == 0 else ("S" if i % 3 == 1 else "U")
    base = rng.choice(list(AA), 40)
    base[rng.random(40) < 0.3] = marks[loc]
    if mem == "M":
      base[rng.random(40) < 0.3] = "L"
    seq = "".join(base)
    lines += [f">P{i} {pdata.LOCATIONS[loc]}-{mem}", seq]
    recs.append((f"P{i}", seq))
  path.write_text("\n".join(lines) + "\n")
  return recs


def test_protein_probe_learns_both_heads(tmp_path):
  recs = _write_loc_fasta(tmp_path / "loc.fasta", 300, seed=0)
  featurize.featurize_records("onehot", recs, tmp_path / "loc.h5")
  recs = _write_loc_fasta(tmp_path / "test.fasta", 100, seed=1)
  featurize.featurize_records("onehot", recs, tmp_path / "test.h5")
  probe = ptrain.train_protein_probe(
      tmp_path / "loc.h5", tmp_path / "loc.fasta", pooling="mean",
      config=ptrain.TrainConfig(max_epochs=60, patience=8, batch_size=32, learning_rate=3e-3,
                                val_fraction=0.15), progress=False)
  rep = ptrain.evaluate(probe, tmp_path / "test.h5", tmp_path / "test.fasta")
  assert rep["metrics"]["Q10"]["accuracy"] > 70  # majority 10 %
  assert rep["metrics"]["Q10"]["n_proteins"] == 100
  assert rep["metrics"]["Q2"]["n_proteins"] == 67  # U excluded
  assert rep["metrics"]["Q2"]["accuracy"] > 80  # majority ~50 %


@pytest.mark.parametrize("pooling,width", [("mean", 21), ("min", 21), ("max", 21),
                                           ("concat", 63)])
def test_pooling(pooling, width):
  x = np.array([[1.0, -2.0], [3.0, 0.0]])
  p = pdata.pool(x, pooling)
  want = {"mean": [2, -1], "min": [1, -2], "max": [3, 0],
          "concat": [1, -2, 3, 0, 2, -1]}[pooling]
  np.testing.assert_allclose(p, want)
  assert pdata.pool(np.zeros((4, 21)), pooling).shape == (width,)


def test_deeploc_labels_from_headers_and_csv(tmp_path, fixtures_dir):
  fx = fixtures_dir / "probes"
  val = list(pdata.read_deeploc(fx / "tiny_deeploc_val.fasta"))
  loc = {r: l for r, _, l, _ in val}
  mem = {r: m for r, _, _, m in val}
  assert loc == {"Q1": pdata.LOCATIONS.index("Cell.membrane"), "Q2": 0, "Q3": -1,
                 "Q4": pdata.LOCATIONS.index("Extracellular"),
                 "Q5": pdata.LOCATIONS.index("Mitochondrion")}
  assert mem == {"Q1": 0, "Q2": -1, "Q3": -1, "Q4": 1, "Q5": 1}
  tr = list(pdata.read_deeploc(fx / "tiny_deeploc_train.fasta", fx / "tiny_deeploc_labels.csv"))
  assert [(r, l, m) for r, _, l, m in tr] == [("deeploc_train_0", 4, -1),
                                             ("deeploc_train_1", 0, -1),
                                             ("deeploc_train_2", 2, -1)]


# --- CLI and bad input ------------------------------------------------------------
def _run(argv):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  return e.value.code


def test_cli_featurize_train_eval(tmp_path, fixtures_dir, capsys):
  fx = fixtures_dir / "probes"
  assert _run(["featurize", "--kind", "blosum62", str(fx / "tiny_deeploc_val.fasta"),
               str(tmp_path / "v.h5")]) == 0
  assert _run(["featurize", "--kind", "blosum62", str(fx / "tiny_deeploc_train.fasta"),
               str(tmp_path / "t.h5")]) == 0
  assert eio.read_attrs(tmp_path / "v.h5").dim == 20
  assert _run(["train", "--task", "location", "--embeddings", str(tmp_path / "t.h5"),
               "--labels", str(fx / "tiny_deeploc_train.fasta"), "--labels-csv",
               str(fx / "tiny_deeploc_labels.csv"), "--pooling", "concat",
               "--max-epochs", "2", "--val-fraction", "0.34", "--quiet",
               "--out", str(tmp_path / "probe")]) == 0
  cfg = json.loads((tmp_path / "probe" / "config.json").read_text())
  assert cfg["pooling"] == "concat" and cfg["input_dim"] == 20
  assert "membrane head is untrained" in capsys.readouterr().err
  assert _run(["eval", "--probe", str(tmp_path / "probe"), "--embeddings",
               str(tmp_path / "v.h5"), "--labels", str(fx / "tiny_deeploc_val.fasta"),
               "--bootstrap", "50", "--out", str(tmp_path / "r.json")]) == 0
  rep = json.loads((tmp_path / "r.json").read_text())
  assert rep["metrics"]["Q10"]["n_proteins"] == 4  # Cytoplasm-Nucleus dropped
  assert "Q2" not in rep["metrics"]  # no membrane labels in training
  # Trained on the file with membrane labels, both heads are scored.
  assert _run(["train", "--task", "location", "--embeddings", str(tmp_path / "v.h5"),
               "--labels", str(fx / "tiny_deeploc_val.fasta"), "--max-epochs", "2",
               "--val-fraction", "0.2", "--quiet", "--out", str(tmp_path / "probe2")]) == 0
  assert _run(["eval", "--probe", str(tmp_path / "probe2"), "--embeddings",
               str(tmp_path / "v.h5"), "--labels", str(fx / "tiny_deeploc_val.fasta"),
               "--bootstrap", "50", "--out", str(tmp_path / "r2.json")]) == 0
  rep = json.loads((tmp_path / "r2.json").read_text())
  assert rep["metrics"]["Q10"]["n_proteins"] == 4
  assert rep["metrics"]["Q2"]["n_proteins"] == 3  # U excluded
  md = (tmp_path / "r2.md").read_text()
  assert "| Q10 |" in md and "| Q2 |" in md and "Lysosome/Vacuole" in md
  # --exclude-fasta drops training proteins whose sequence is in the test set.
  assert _run(["train", "--task", "location", "--embeddings", str(tmp_path / "v.h5"),
               "--labels", str(fx / "tiny_deeploc_val.fasta"), "--exclude-fasta",
               str(fx / "tiny_deeploc_val.fasta"), "--quiet", "--out",
               str(tmp_path / "p3")]) == 2
  assert "need at least 2 proteins" in capsys.readouterr().err


def test_cli_ss_eval_writes_json_and_markdown(ss_files, cnn_probe, tmp_path):
  _, probe_dir = cnn_probe
  assert _run(["eval", "--probe", str(probe_dir), "--embeddings", str(ss_files / "test.h5"),
               "--labels", str(ss_files / "test.csv"), "--cb513", "--bootstrap", "100",
               "--out", str(tmp_path / "r.json")]) == 0
  rep = json.loads((tmp_path / "r.json").read_text())
  assert set(rep["metrics"]) == {"Q3", "Q8"}
  assert "cb513_mask==1" in rep["scoring"]
  assert "| Q3 |" in (tmp_path / "r.md").read_text()


def _error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  return err[0]


def test_embeddings_of_another_model_refused(ss_files, cnn_probe, tmp_path, capsys):
  _, probe_dir = cnn_probe
  out = tmp_path / "r.json"
  assert _run(["eval", "--probe", str(probe_dir), "--embeddings",
               str(ss_files / "test_blosum.h5"), "--labels", str(ss_files / "test.csv"),
               "--out", str(out)]) == 2
  line = _error_line(capsys)
  assert "test_blosum.h5" in line and "dimension 20" in line and "expected 21" in line
  assert not out.exists() and not (tmp_path / "r.md").exists()


def test_missing_id_refused(tmp_path, fixtures_dir, capsys):
  fx = fixtures_dir / "probes"
  featurize.featurize_records("onehot", [("0", "MKTAY"), ("2", "ALEX")], tmp_path / "e.h5")
  out = tmp_path / "p"
  assert _run(["train", "--task", "ss3ss8", "--embeddings", str(tmp_path / "e.h5"),
               "--labels", str(fx / "tiny_ss.csv"), "--quiet", "--out", str(out)]) == 2
  line = _error_line(capsys)
  assert "e.h5, record '1': no embedding" in line and "tiny_ss.csv" in line
  assert not out.exists()


def test_label_length_mismatch_refused(tmp_path, fixtures_dir, capsys):
  fx = fixtures_dir / "probes"
  featurize.featurize_records("onehot", [("0", "MKT"), ("1", "GSEV")], tmp_path / "e.h5")
  out = tmp_path / "p"
  assert _run(["train", "--task", "ss3ss8", "--embeddings", str(tmp_path / "e.h5"),
               "--labels", str(fx / "bad_length.csv"), "--quiet", "--out", str(out)]) == 2
  line = _error_line(capsys)
  assert "bad_length.csv, record '1'" in line and "3 labels for 4 residues" in line
  assert not out.exists()


def test_embedding_length_mismatch_refused(tmp_path, fixtures_dir):
  fx = fixtures_dir / "probes"
  featurize.featurize_records("onehot", [("0", "MKTA"), ("1", "GSEVIL"), ("2", "ALEX")],
                              tmp_path / "e.h5")
  with pytest.raises(Exception, match=r"e\.h5, record '0': embedding has 4 residues but "
                     r"the sequence in .*tiny_ss\.csv has 5"):
    pdata.load_residue_set(tmp_path / "e.h5", fx / "tiny_ss.csv")
