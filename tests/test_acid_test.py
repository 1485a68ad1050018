"""Smoke test of bench/acid_test.py: the whole path on tiny generated data,
for every family (the same road after the trainer).

Pretrain the family's tiny model (stopped by the wall-clock budget after a
step or two), export, embed, probe (trained LM, random LM, one-hot,
BLOSUM62), pool, plot, report; then a rerun on the same work dir resumes from
the caches and gives the same numbers.
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import math
import os
import pathlib
import shutil

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
LOCATIONS = ("Nucleus", "Cytoplasm", "Extracellular", "Mitochondrion", "Cell.membrane",
             "Endoplasmic.reticulum", "Plastid", "Golgi.apparatus", "Lysosome/Vacuole",
             "Peroxisome")


def _load_script():
  spec = importlib.util.spec_from_file_location("acid_test", REPO / "bench" / "acid_test.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _seq(rng, lo, hi):
  return "".join(rng.choice(list(RESIDUES), rng.integers(lo, hi)))


def _ss_csv(path, rng, n, seq_col, cb513):
  rows = []
  for _ in range(n):
    s = _seq(rng, 20, 70)
    d3 = rng.choice(list("HEC"), len(s))
    d8 = [{"H": "H", "E": "E", "C": "C"}[c] for c in d3]
    dis = rng.choice([0, 1], len(s), p=[0.1, 0.9])
    row = [" ".join(s), " ".join(d3), " ".join(d8), " ".join(map(str, dis))]
    if cb513:
      row.append(" ".join(map(str, rng.choice([0, 1], len(s), p=[0.3, 0.7]))))
    else:
      row.append(" ".join("1" for _ in s))
    rows.append(row)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow([seq_col, " dssp3", " dssp8", " disorder", " cb513_mask"])
    w.writerows(rows)


def make_data(root: pathlib.Path) -> None:
  rng = np.random.default_rng(7)
  pre = root / "pretraining"
  pre.mkdir(parents=True)
  for name, style in (("a.fasta", "sp"), ("b.fasta", "plain")):
    with open(pre / name, "w") as f:
      for i in range(60):
        head = f"sp|P{name[0]}{i:04d}|X_Y desc" if style == "sp" else f"{name[0]}{i} EC~~~n~~~"
        f.write(f">{head}\n{_seq(rng, 20, 90)}\n")
  ss = root / "secondary_structure"
  ss.mkdir()
  _ss_csv(ss / "netsurfp2_train.csv.gz", rng, 30, "seq", cb513=False)
  _ss_csv(ss / "CB513.csv", rng, 8, "input", cb513=True)
  _ss_csv(ss / "TS115.csv", rng, 6, "input", cb513=False)
  loc = root / "localization"
  loc.mkdir()
  train = [(f"deeploc_train_{i}", _seq(rng, 30, 100), LOCATIONS[i % 10]) for i in range(40)]
  with open(loc / "deeploc_train_10class.fasta", "w") as f:
    f.writelines(f">{i}\n{s}\n" for i, s, _ in train)
  with open(loc / "deeploc_train_10class_labels.csv", "w") as f:
    f.write("Label,Class\n" + "".join(f"{i},{c}\n" for i, _, c in train))
  with open(loc / "deeploc_val_membrane.fasta", "w") as f:
    for i in range(24):
      # The first four repeat training sequences: they must leave the train set.
      s = train[i][1] if i < 4 else _seq(rng, 30, 100)
      where = "Cytoplasm-Nucleus" if i == 5 else LOCATIONS[i % 10]
      f.write(f">Q{i:05d} {where}-{'MSU'[i % 3]}\n{s}\n")


FAMILIES = ("prott5", "protbert", "protalbert", "protelectra", "protxlnet", "prottxl")
# Each family's tiny size (gin_configs/models/<family>_tiny.gin): hidden width 32.
TINY = {f: str(REPO / "gin_configs" / "models" / f"{f}_tiny.gin") for f in FAMILIES}
REPORTS = {f: "acid_test" if f == "prott5" else f"acid_test_{f}" for f in FAMILIES}


def test_every_registered_family_has_an_acid_run():
  from protjax.models import registry
  assert sorted(FAMILIES) == sorted(registry.FAMILIES)


def acid_argv(root: pathlib.Path, family: str) -> list[str]:
  """A whole acid-test run on make_data's files that takes seconds: tiny model,
  a budget of 0 minutes (one step or two), probes of a few epochs; the
  pooling comparison beyond mean (family-neutral) for ProtT5 only."""
  return ["--family", family, "--data", str(root / "data"), "--out", str(root / "out"),
          "--work_dir", str(root / "work"), "--model_gin", TINY[family],
          "--gin", "DataConfig.sequence_length = 64", "--gin", "DataConfig.batch_size = 8",
          "--gin", "DataConfig.validation_fraction = 0.2",
          "--gin", "train.train_steps = 50", "--gin", "train.eval_every = 1",
          "--gin", "train.eval_steps = 2", "--gin", "train.log_every = 1",
          "--gin", "CheckpointConfig.save_every = 1000",
          # No warm-up: the one step the budget allows must move the weights.
          "--gin", "linear_warmup_decay.warmup_steps = 0",
          "--train_minutes", "0", "--ss_train_chains", "20", "--loc_train_proteins", "30",
          "--ss_max_epochs", "2", "--ss_patience", "1", "--loc_max_epochs", "3",
          "--loc_patience", "1", "--folds", "2",
          "--poolings", "mean,concat" if family == "prott5" else "mean",
          "--tsne_perplexity", "5", "--embed_token_budget", "1024"]


BASELINE_CACHES = ("ss_onehot.json", "loc_onehot_mean.json", "ss_blosum62.json",
                   "loc_blosum62_mean.json")


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
  """The one-hot and BLOSUM62 probe results of the first run: they do not
  depend on the family (same data, seed and probes), so later runs start with
  them in their caches instead of training them again."""
  return tmp_path_factory.mktemp("baselines")


# The encoder-decoder and an encoder-only family by default; ProtAlbert
# (ProtBert's module with a shared layer) and ProtElectra (its discriminator
# is what is embedded) take the same road, with `pytest -m slow`.
@pytest.fixture(scope="module", params=["prott5", "protbert"] + [
    pytest.param(f, marks=pytest.mark.slow)
    for f in ("protalbert", "protelectra", "protxlnet", "prottxl")])
def acid_run(request, tmp_path_factory, baselines):
  family = request.param
  root = tmp_path_factory.mktemp(f"acid_{family}")
  make_data(root / "data")
  (root / "work" / "results").mkdir(parents=True)
  for name in BASELINE_CACHES:
    if (baselines / name).exists():
      shutil.copy(baselines / name, root / "work" / "results" / name)
  acid = _load_script()
  argv = acid_argv(root, family)
  assert acid.main(argv) == 0
  for name in BASELINE_CACHES:
    shutil.copy(root / "work" / "results" / name, baselines / name)
  with open(root / "out" / f"{REPORTS[family]}.json") as f:
    rep = json.load(f)
  return acid, argv, root, rep


def _family(rep) -> str:
  return rep["pretraining"]["family"]


def test_outputs_exist(acid_run):
  _, _, root, rep = acid_run
  out, name = root / "out", REPORTS[_family(rep)]
  for png in (f"{name}_pretraining.png", f"{name}_tsne.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / f"{name}.md").read_text()
  for needle in ("## Verdict", "trained LM", "random LM", "one-hot", "BLOSUM62", "Q10", "Q2",
                 "## Pooling comparison", "## Machine and wall time", "paired SE (better on",
                 f"# Acid test: {_family(rep)} pretrained"):
    assert needle in md
  assert rep["machine"]["cpus"] == os.cpu_count()
  assert rep["wall_seconds"] > 0
  assert rep["encoders"]["trained_lm"].endswith("trained_lm")


def test_budget_stops_pretraining_and_heldout_eval(acid_run):
  _, _, _, rep = acid_run
  pre = rep["pretraining"]
  # Budget 0 minutes: the hook signals after the first step; the trainer
  # checkpoints and stops at the next poll, far short of train_steps=50.
  assert pre["stopped_by_budget_at"] == 1
  assert 1 <= pre["final_step"] <= 3
  # --model_gin reached the model (every tiny size is 32 wide), and the run
  # file still overrides it (prott5_tiny.gin says dropout 0.1).
  assert 32 in (pre["model_config"].get("d_model"), pre["model_config"].get("hidden_size"))
  assert pre["model_config"]["dropout_rate"] == 0.0
  ho = pre["heldout"]
  assert ho["masked_positions"] > 0 and ho["sequences"] > 0
  assert 0.0 <= ho["masked_residue_accuracy"] <= 1.0
  assert 0.0 < ho["best_constant_accuracy"] <= 1.0
  # An untrained model predicts roughly uniformly over its vocabulary.
  vocab = pre["model_config"]["vocab_size"]
  assert abs(pre["heldout_random_init"]["cross_entropy"] - math.log(vocab)) < 0.5


def test_table_and_criterion_consistent(acid_run):
  acid, _, _, rep = acid_run
  probes = rep["probes"]
  for kind in ("trained_lm", "random_lm", "onehot", "blosum62"):
    for name in ("CB513", "TS115"):
      for q in ("Q3", "Q8"):
        m = probes["ss"][kind][name][q]
        assert 0.0 <= m["accuracy"] <= 100.0 and m["se"] >= 0.0
    for q in ("Q10", "Q2"):
      assert 0.0 <= probes["loc"][kind]["cv"][q]["accuracy"] <= 100.0
  assert sorted(probes["pooling"]) == (["concat", "mean"] if _family(rep) == "prott5"
                                      else ["mean"])
  c = rep["acid_criterion"]
  t, r = probes["ss"]["trained_lm"]["CB513"]["Q3"], probes["ss"]["random_lm"]["CB513"]["Q3"]
  assert c["difference"] == pytest.approx(t["accuracy"] - r["accuracy"])
  assert c["combined_se"] == pytest.approx(math.hypot(t["se"], r["se"]))
  assert c["passed"] == (c["difference"] > 2 * c["combined_se"])
  # A ratio just short of 2 reads as short of 2 (it once printed "2.0" beside NOT MET).
  near = {**rep, "acid_criterion": {**c, "ratio": 1.956, "passed": False}}
  assert "= 1.96 × the combined SE" in acid.markdown(near)
  # The paired comparison: the same difference, an SE from shared resamples.
  p = rep["paired"]["random_lm"]
  assert set(rep["paired"]) == {"random_lm", "onehot", "blosum62"}
  assert p["difference"] == pytest.approx(c["difference"])
  assert p["paired_se"] > 0 and p["proteins_better"] + p["proteins_worse"] <= t["n_proteins"]
  # Subsampling as asked; the 4 validation-file repeats left DeepLoc train first.
  pd_ = rep["probe_data"]
  assert (pd_["netsurfp_train_chains"]["used"], pd_["netsurfp_train_chains"]["of"]) == (20, 30)
  assert pd_["deeploc_train"]["not_in_validation_file"] == 36
  assert pd_["deeploc_train"]["used"] == 30


def test_random_lm_is_the_familys_init_and_embeddings_differ(acid_run):
  """The control is the family's initialiser (seed --random_seed) of the
  trained model's config, encoder subtrees only; its embeddings are not the
  trained LM's."""
  import jax
  from protjax import embeddings_io, export
  acid, _, root, rep = acid_run
  pre = rep["pretraining"]
  random_lm = export.load_model(root / "work" / "encoders" / "random_lm")
  trained = export.load_model(root / "work" / "encoders" / "trained_lm")
  assert random_lm.family.name == trained.family.name == _family(rep)
  assert random_lm.kind == "encoder" and random_lm.config == trained.config
  init = random_lm.family.encoder_params(
      acid.random_params(_family(rep), random_lm.config, pre["batch_shapes"], 1234))
  leaves = lambda tree: jax.tree_util.tree_leaves_with_path(tree)
  for (path, a), (_, b), (_, t) in zip(leaves(init), leaves(random_lm.params),
                                       leaves(trained.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  a = embeddings_io.load_embeddings(root / "work" / "probes" / "trained_lm_CB513.h5")
  b = embeddings_io.load_embeddings(root / "work" / "probes" / "random_lm_CB513.h5")
  assert set(a) == set(b) and len(a) == 8
  k = sorted(a)[0]
  assert a[k].shape == b[k].shape and a[k].shape[1] == 32
  assert not np.allclose(a[k], b[k])


def test_rerun_resumes_with_same_numbers(acid_run):
  acid, argv, root, rep = acid_run
  if _family(rep) != "prott5":
    pytest.skip("the caches are family-neutral: one family suffices")
  assert acid.main(argv + ["--note", "A rerun."]) == 0
  again = json.loads((root / "out" / "acid_test.json").read_text())
  assert again["cached_stages"] == list(acid.STAGES)
  assert again["pretraining"]["final_step"] == rep["pretraining"]["final_step"]
  assert again["acid_criterion"] == rep["acid_criterion"]
  assert again["probes"]["ss"] == rep["probes"]["ss"]
  assert again["stage_seconds"]["pretrain"] == rep["stage_seconds"]["pretrain"]
  assert "Note (by the person who ran it): A rerun." in (root / "out" / "acid_test.md").read_text()


def test_resumed_pretraining_reports_the_whole_run(acid_run, tmp_path):
  """Pretraining stopped and started again (a kill mid-run) resumes from its
  checkpoint; the report still gives the step the run started at, its
  invocations and every evaluation, not only the last invocation's."""
  acid, argv, root, rep = acid_run
  if _family(rep) != "protbert":
    pytest.skip("whole_run reads the trainer's event files alike for every family")
  first = rep["pretraining"]
  assert (first["run_start_step"], first["invocations"]) == (first["start_step"], 1) == (0, 1)
  work, out = tmp_path / "work", tmp_path / "out"
  shutil.copytree(root / "work", work)
  (work / "stage_pretrain.json").unlink()  # as if killed before the stage finished
  moved = {"--work_dir": str(work), "--out": str(out)}
  assert acid.main([moved.get(prev, a) for prev, a in zip([None] + argv, argv)]) == 0
  again = json.loads((out / "acid_test_protbert.json").read_text())["pretraining"]
  assert again["start_step"] == first["final_step"] < again["final_step"]
  assert (again["run_start_step"], again["invocations"]) == (0, 2)
  assert again["earlier_invocations_seconds"] > 0
  assert set(first["eval_history"]) < set(again["eval_history"])
  for s, e in first["eval_history"].items():
    assert again["eval_history"][s]["loss"] == pytest.approx(e["loss"])
  md = (out / "acid_test_protbert.md").read_text()
  assert f"(started at 0, in 2 invocations: this one resumed at {first['final_step']} after" in md
  # The trained LM's embeddings and probes are the resumed model's, not the
  # first invocation's left in the work dir; the random LM's were kept.
  from protjax.embeddings_io import read_embeddings
  def cb513(w, kind):
    return dict(read_embeddings(w / "probes" / f"{kind}_CB513.h5"))
  before, after = cb513(root / "work", "trained_lm"), cb513(work, "trained_lm")
  assert not all(np.array_equal(before[k], after[k]) for k in before)
  before, after = cb513(root / "work", "random_lm"), cb513(work, "random_lm")
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_probe_seeds_and_diagnostics_read_the_work_dir(acid_run, tmp_path, monkeypatch):
  """bench/acid_probe_seeds.py: its row for the run's own probe seed is the
  report's CB513 figures; another seed retrains both probes. And
  bench/acid_diagnostics.py runs on the same caches."""
  _, _, root, rep = acid_run
  if _family(rep) != "prott5":
    pytest.skip("the scripts read the work dir's caches alike for every family")
  seeds = _load_bench("acid_probe_seeds")
  out = tmp_path / "seeds.json"
  assert seeds.main(["--work_dir", str(root / "work"), "--seeds", "0,3", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [r["seed"] for r in rows] == [0, 3]
  crit, paired = rep["acid_criterion"], rep["paired"]["random_lm"]
  assert rows[0]["trained_q3"] == pytest.approx(crit["trained_q3"])
  assert rows[0]["random_q3"] == pytest.approx(crit["random_q3"])
  assert rows[0]["combined_se"] == pytest.approx(crit["combined_se"])
  assert rows[0]["paired_se"] == pytest.approx(paired["paired_se"])
  assert all(0 < r["trained_q3"] < 100 and r["paired_se"] > 0 for r in rows)
  # --standardize_residues retrains every seed, the run's own too, standardised.
  calls = []
  real = seeds.ptrain.train_residue_probe
  monkeypatch.setattr(seeds.ptrain, "train_residue_probe",
                      lambda *a, **kw: calls.append(kw["config"]) or real(*a, **kw))
  assert seeds.main(["--work_dir", str(root / "work"), "--seeds", "0",
                     "--standardize_residues", "--out", str(tmp_path / "std.json")]) == 0
  std = json.loads((tmp_path / "std.json").read_text())
  assert std["standardize_residues"] and [r["seed"] for r in std["rows"]] == [0]
  assert [(c.seed, c.standardize_residues) for c in calls] == [(0, True), (0, True)]
  diag = _load_bench("acid_diagnostics")
  assert diag.main(["--work_dir", str(root / "work"), "--ss_max_epochs", "2",
                    "--ss_patience", "1", "--out", str(tmp_path / "diag.json")]) == 0
  d = json.loads((tmp_path / "diag.json").read_text())
  assert sorted(d) == ["onehot", "random_lm", "trained_lm"]
  # One-hot features name the residue exactly (X and rare letters aside).
  assert d["onehot"]["identity_accuracy"] > 95.0
  for kind in d:
    assert 0.0 <= d[kind]["linear_q3_window7"] <= 100.0
    assert d[kind]["cnn_standardised_q3"]["se"] >= 0.0


def _load_bench(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("family", FAMILIES)
def test_default_run_is_the_familys_model_on_a_schedule_ending_at_its_last_step(family):
  """The default command's gins: the family's acid-test model, its trainer
  Model, and a learning rate that warms up to its peak and reaches 0 at
  train.train_steps, which ACID_STEPS moves together (a longer run set with
  train.train_steps alone would train on at rate 0)."""
  import gin
  from protjax import optim
  from protjax.models import registry
  acid = _load_script()
  # ProtTXL's and ProtXLNet's runs take 6,000 steps: their steps cost ~1.8x the
  # others' (their gins).
  default_steps = {"prottxl": 6000, "protxlnet": 6000}.get(family, 11000)
  for extra, steps in (([], default_steps), (["--gin", "ACID_STEPS = 3000"], 3000)):
    args = acid.parse_args(["--family", family] + extra)
    assert args.name == REPORTS[family] and args.work_dir == f"/tmp/protjax_{args.name}"
    acid._parse_gin([args.model_gin, args.gin_file],  # pylint: disable=protected-access
                    [f"get_model.family = {family!r}"] + args.gin)
    try:
      model = gin.get_configurable(registry.get_model)()
      assert registry.family_of(model.config).name == family
      width = getattr(model.config, "d_model", None) or model.config.hidden_size
      assert width == 128 and model.config.dropout_rate == 0.0
      # train.train_steps is %ACID_STEPS: a macro reference, resolved by calling it.
      assert gin.query_parameter("train.train_steps").scoped_configurable_fn() == steps
      rate = gin.get_configurable(optim.linear_warmup_decay)()
      peak = gin.query_parameter("linear_warmup_decay.peak_rate")
      warmup = gin.query_parameter("linear_warmup_decay.warmup_steps")
      assert float(rate(warmup)) == pytest.approx(peak)
      assert float(rate(steps - 1)) > 0 and float(rate(steps)) == 0
    finally:
      gin.clear_config()


def test_a_model_gin_of_another_family_is_refused(tmp_path):
  """Its config class's defaults would otherwise build the paper-size model."""
  acid = _load_script()
  make_data(tmp_path / "data")
  argv = acid_argv(tmp_path, "protbert")
  argv[argv.index("--model_gin") + 1] = TINY["prott5"]
  with pytest.raises(SystemExit, match="binds no BertConfig: not a protbert model"):
    acid.main(argv)


def test_a_data_dir_without_the_probe_sets_is_one_line_and_writes_nothing(tmp_path):
  """As a user runs it: --data pointing at a corpus without the probe sets
  stops before any stage, naming what is missing; no work dir is made."""
  import subprocess
  import sys
  (tmp_path / "data" / "pretraining").mkdir(parents=True)
  work = tmp_path / "work"
  proc = subprocess.run([sys.executable, str(REPO / "bench" / "acid_test.py"),
                         "--data", str(tmp_path / "data"), "--work_dir", str(work),
                         "--out", str(tmp_path / "out")],
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "secondary_structure/CB513.csv" in lines[0], proc.stderr
  assert "pretraining," not in lines[0]  # it is there
  assert not work.exists() and not (tmp_path / "out").exists()
