"""Smoke test of bench/acid_test.py: the whole path on tiny generated data.

Pretrain ProtT5-tiny (stopped by the wall-clock budget after a step or two),
export, embed, probe (trained LM, random LM, one-hot, BLOSUM62), pool, plot,
report; then a rerun on the same work dir resumes from the caches and gives
the same numbers.
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


@pytest.fixture(scope="module")
def acid_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("acid")
  make_data(root / "data")
  acid = _load_script()
  argv = ["--data", str(root / "data"), "--out", str(root / "out"),
          "--work_dir", str(root / "work"),
          "--model_gin", str(REPO / "gin_configs" / "models" / "prott5_tiny.gin"),
          "--gin", "DataConfig.sequence_length = 64", "--gin", "DataConfig.batch_size = 8",
          "--gin", "DataConfig.validation_fraction = 0.2",
          "--gin", "DataConfig.shuffle_buffer_size = 100",
          "--gin", "train.train_steps = 50", "--gin", "train.eval_every = 1",
          "--gin", "train.eval_steps = 2", "--gin", "train.log_every = 1",
          "--gin", "CheckpointConfig.save_every = 1000",
          # No warm-up: the budget of 0 minutes stops after one step, which
          # must move the weights (the seeded-MLM test tells them apart).
          "--gin", "linear_warmup_decay.warmup_steps = 0",
          "--train_minutes", "0", "--ss_train_chains", "20", "--loc_train_proteins", "30",
          "--ss_max_epochs", "2", "--ss_patience", "1", "--loc_max_epochs", "3",
          "--loc_patience", "1", "--folds", "2", "--poolings", "mean,concat", "--tsne_perplexity", "5",
          "--embed_token_budget", "1024"]
  assert acid.main(argv) == 0
  with open(root / "out" / "acid_test.json") as f:
    rep = json.load(f)
  return acid, argv, root, rep


def test_outputs_exist(acid_run):
  _, _, root, rep = acid_run
  out = root / "out"
  for name in ("acid_test_pretraining.png", "acid_test_tsne.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / "acid_test.md").read_text()
  for needle in ("## Verdict", "trained LM", "random LM", "one-hot", "BLOSUM62", "Q10", "Q2",
                 "## Pooling comparison", "## Machine and wall time", "T5Config.d_model = 32"):
    assert needle in md
  assert rep["machine"]["cpus"] == os.cpu_count()
  assert rep["wall_seconds"] > 0


def test_budget_stops_pretraining_and_heldout_eval(acid_run):
  _, _, _, rep = acid_run
  pre = rep["pretraining"]
  # Budget 0 minutes: the hook signals after the first step; the trainer
  # checkpoints and stops at the next poll, far short of train_steps=50.
  assert pre["stopped_by_budget_at"] == 1
  assert 1 <= pre["final_step"] <= 3
  assert pre["model_config"]["d_model"] == 32  # --model_gin reached the model
  # ... and the run file still overrides it (prott5_tiny.gin says dropout 0.1).
  assert pre["model_config"]["dropout_rate"] == 0.0
  ho = pre["heldout"]
  assert ho["masked_positions"] > 0 and ho["sequences"] > 0
  assert 0.0 <= ho["masked_residue_accuracy"] <= 1.0
  assert 0.0 < ho["best_constant_accuracy"] <= 1.0
  # An untrained tiny T5 predicts roughly uniformly over 128 ids.
  assert abs(pre["heldout_random_init"]["cross_entropy"] - math.log(128)) < 0.5


def test_table_and_criterion_consistent(acid_run):
  acid, _, _, rep = acid_run
  probes = rep["probes"]
  for kind in ("trained_lm", "random_lm", "onehot", "blosum62"):
    for name in ("CB513", "TS115"):
      for q in ("Q3", "Q8"):
        m = probes["ss"][kind][name][q]
        assert 0.0 <= m["accuracy"] <= 100.0 and m["se"] >= 0.0
    for q in ("Q10", "Q2"):
      m = probes["loc"][kind]["cv"][q]
      assert 0.0 <= m["accuracy"] <= 100.0
  assert sorted(probes["pooling"]) == ["concat", "mean"]
  for pooling in ("mean", "concat"):
    assert "Q10" in probes["pooling"][pooling]["cv"]
  c = rep["acid_criterion"]
  t, r = probes["ss"]["trained_lm"]["CB513"]["Q3"], probes["ss"]["random_lm"]["CB513"]["Q3"]
  assert c["difference"] == pytest.approx(t["accuracy"] - r["accuracy"])
  assert c["combined_se"] == pytest.approx(math.hypot(t["se"], r["se"]))
  assert c["passed"] == (c["difference"] > 2 * c["combined_se"])
  # A ratio just short of 2 reads as short of 2 (it once printed "2.0" beside NOT MET).
  near = {**rep, "acid_criterion": {**c, "ratio": 1.956, "passed": False}}
  assert "= 1.96 × the combined SE" in acid.markdown(near)
  # Subsampling as asked; the 4 validation-file repeats left DeepLoc train first.
  pd_ = rep["probe_data"]
  assert pd_["netsurfp_train_chains"] == {"used": 20, "of": 30,
                                          "residues": pd_["netsurfp_train_chains"]["residues"]}
  assert pd_["deeploc_train"]["not_in_validation_file"] == 36
  assert pd_["deeploc_train"]["used"] == 30


def test_paired_comparison_and_rescoring_saved_probes(acid_run):
  """The paired CB513 Q3 comparison: same difference as the criterion, an SE
  from shared resamples, and the same figures when the per-protein counts
  must come from re-scoring the saved probes (reports from before they were kept)."""
  import copy
  acid, _, root, rep = acid_run
  crit, paired = rep["acid_criterion"], rep["paired"]
  assert set(paired) == {"random_lm", "onehot", "blosum62"}
  p = paired["random_lm"]
  assert p["difference"] == pytest.approx(crit["difference"])
  n = rep["probes"]["ss"]["trained_lm"]["CB513"]["Q3"]["n_proteins"]
  assert p["paired_se"] > 0 and p["proteins_better"] + p["proteins_worse"] <= n
  assert "paired SE (better on" in (root / "out" / "acid_test.md").read_text()
  legacy = copy.deepcopy(rep["probes"])
  for kind in legacy["ss"]:
    del legacy["ss"][kind]["CB513"]["Q3"]["per_protein"]
  assert acid.paired_comparison(str(root / "work"), legacy, rep["probe_data"]) == paired
  # A saved probe that does not re-score to the reported accuracy is not used.
  legacy["ss"]["onehot"]["CB513"]["Q3"]["accuracy"] += 0.5
  again = acid.paired_comparison(str(root / "work"), legacy, rep["probe_data"])
  assert again["onehot"] is None and again["random_lm"] == paired["random_lm"]


def test_probe_seeds_reproduce_the_run_and_retrain(acid_run, tmp_path, monkeypatch):
  """bench/acid_probe_seeds.py: its row for the run's own probe seed is the
  report's CB513 figures; another seed retrains both probes."""
  spec = importlib.util.spec_from_file_location("acid_probe_seeds",
                                                REPO / "bench" / "acid_probe_seeds.py")
  seeds = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(seeds)
  _, _, root, rep = acid_run
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
                     "--standardize_residues"]) == 0
  std = json.loads((root / "work" / "probe_seeds_standardized.json").read_text())
  assert std["standardize_residues"] and [r["seed"] for r in std["rows"]] == [0]
  assert [(c.seed, c.standardize_residues) for c in calls] == [(0, True), (0, True)]
  assert 0 < std["rows"][0]["trained_q3"] < 100


def test_rerender_from_the_report_json_alone(acid_run, tmp_path):
  """--rerender_from: a report is redrawn from its JSON (no work dir), with a
  note and an Investigation row added; its figures and verdict are the run's."""
  import shutil
  acid, _, root, rep = acid_run
  for ext in (".json", ".md"):
    shutil.copy(root / "out" / f"acid_test{ext}", tmp_path / f"copy{ext}")
  argv = ["--rerender_from", str(tmp_path / "copy.json"), "--note", "A later finding.",
          "--investigation", str(root / "out" / "acid_test.json")]
  with pytest.raises(SystemExit, match="needs --rerender_reason"):
    acid.main(argv)
  assert acid.main(argv + ["--rerender_reason", "a test"]) == 0
  md = (tmp_path / "copy.md").read_text()
  again = json.loads((tmp_path / "copy.json").read_text())
  assert "A later finding." in md and "from that run's report JSON (no stage re-run; a test)" in md
  assert "## Investigation" in md and rep["command"] in md.split("## Investigation")[1]
  assert again["acid_criterion"] == rep["acid_criterion"] and again["probes"] == rep["probes"]
  assert again["settings"]["note"][-1] == "A later finding."
  verdict = lambda text: text.split("## Verdict")[1].split("##")[0]
  assert verdict(md) == verdict((root / "out" / "acid_test.md").read_text())


def test_trained_and_random_embeddings_differ(acid_run):
  _, _, root, _ = acid_run
  from protjax import embeddings_io
  a = embeddings_io.load_embeddings(root / "work" / "probes" / "trained_lm_CB513.h5")
  b = embeddings_io.load_embeddings(root / "work" / "probes" / "random_lm_CB513.h5")
  assert set(a) == set(b) and len(a) == 8
  k = sorted(a)[0]
  assert a[k].shape == b[k].shape and a[k].shape[1] == 32
  assert not np.allclose(a[k], b[k])


def test_rerun_resumes_with_same_numbers(acid_run):
  acid, argv, root, rep = acid_run
  assert acid.main(argv) == 0
  with open(root / "out" / "acid_test.json") as f:
    again = json.load(f)
  assert again["pretraining"]["final_step"] == rep["pretraining"]["final_step"]
  assert again["acid_criterion"] == rep["acid_criterion"]
  assert again["probes"]["ss"] == rep["probes"]["ss"]


def test_resumed_pretraining_reports_the_whole_run(acid_run, tmp_path):
  """Pretraining stopped and started again (a session ending mid-run) resumes
  from its checkpoint; the report still gives the step the run started at,
  its invocations and every evaluation, not only the last invocation's."""
  acid, argv, root, rep = acid_run
  first = rep["pretraining"]
  assert (first["run_start_step"], first["invocations"]) == (first["start_step"], 1) == (0, 1)
  work, out = tmp_path / "work", tmp_path / "out"
  shutil.copytree(root / "work", work)
  (work / "stage_pretrain.json").unlink()  # as if killed before the stage finished
  moved = {"--work_dir": str(work), "--out": str(out)}
  resumed_argv = [moved.get(prev, a) for prev, a in zip([None] + argv, argv)]
  assert acid.main(resumed_argv) == 0
  again = json.loads((out / "acid_test.json").read_text())["pretraining"]
  assert again["start_step"] == first["final_step"] < again["final_step"]
  assert (again["run_start_step"], again["invocations"]) == (0, 2)
  assert again["earlier_invocations_seconds"] > 0
  assert set(first["eval_history"]) < set(again["eval_history"])
  for s, e in first["eval_history"].items():
    assert again["eval_history"][s]["loss"] == pytest.approx(e["loss"])
  md = (out / "acid_test.md").read_text()
  assert (f"(started at 0, in 2 invocations: this one resumed at {first['final_step']} after"
          in md)
  # The trained LM's embeddings and probes are the resumed model's, not the
  # first invocation's left in the work dir; the random LM's were kept.
  from protjax.embeddings_io import read_embeddings
  def cb513(w, kind):
    return dict(read_embeddings(w / "probes" / f"{kind}_CB513.h5"))
  before, after = cb513(root / "work", "trained_lm"), cb513(work, "trained_lm")
  assert not all(np.array_equal(before[k], after[k]) for k in before)
  before, after = cb513(root / "work", "random_lm"), cb513(work, "random_lm")
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_resume_pretraining_trains_on_and_stop_after_writes_no_report(acid_run, tmp_path):
  """A run longer than one sitting: the finished pretrain stage is trained on
  from its checkpoint (not reloaded from its cache), and --stop_after ends the
  invocation there without a report."""
  acid, argv, root, rep = acid_run
  work, out = tmp_path / "work", tmp_path / "out"
  shutil.copytree(root / "work", work)
  moved = {"--work_dir": str(work), "--out": str(out)}
  resumed_argv = [moved.get(prev, a) for prev, a in zip([None] + argv, argv)]
  assert acid.main(resumed_argv + ["--resume_pretraining", "--stop_after", "pretrain"]) == 0
  assert not (out / "acid_test.json").exists()
  pre = json.loads((work / "stage_pretrain.json").read_text())
  assert pre["start_step"] == rep["pretraining"]["final_step"] < pre["final_step"]
  # The trained LM's downstream caches went with the old stage; the random LM's stay.
  assert not (work / "stage_export.json").exists()
  assert (work / "probes" / "random_lm_CB513.h5").exists()


def test_default_run_is_the_wide_model_on_a_schedule_ending_at_its_last_step():
  """The default command's gin: ProtT5-mini-wide, and a learning rate that
  warms up to 0.01 and reaches 0 at train.train_steps, which ACID_STEPS
  moves together (a longer run set with train.train_steps alone would
  train on at rate 0)."""
  import gin
  from protjax import optim
  from protjax.models import t5
  acid = _load_script()
  for extra, steps in (([], 11000), (["--gin", "ACID_STEPS = 3000"], 3000)):
    args = acid.build_parser().parse_args(extra)
    acid._parse_gin([args.model_gin, args.gin_file], args.gin)
    try:
      config = gin.get_configurable(t5.T5Config)()
      assert (config.d_model, config.num_encoder_layers) == (128, 3)
      # train.train_steps is %ACID_STEPS: a macro reference, resolved by calling it.
      assert gin.query_parameter("train.train_steps").scoped_configurable_fn() == steps
      rate = gin.get_configurable(optim.linear_warmup_decay)()
      assert float(rate(1000)) == pytest.approx(0.01)
      assert float(rate(steps - 1)) > 0 and float(rate(steps)) == 0
    finally:
      gin.clear_config()


def test_encoder_mlm_loss_matches_numpy():
  """The investigation objective: tied-embedding logits of the encoder, CE at masked positions."""
  import jax
  from protjax.models import t5
  acid = _load_script()
  cfg = t5.T5Config(d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=2,
                    num_decoder_layers=2, dropout_rate=0.0)
  model = acid.EncoderMLM(cfg)
  params = model.init_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 12)})["params"]
  assert sorted(params) == ["encoder", "token_embedder"]
  rng = np.random.default_rng(0)
  tok = rng.integers(3, 23, (2, 12))
  inp = tok.copy()
  inp[:, ::4] = 127
  weights = (inp == 127).astype(np.int32)
  batch = {"encoder_input_tokens": inp, "encoder_target_tokens": tok,
           "encoder_loss_weights": weights}
  loss, metrics = model.loss_fn(params, batch, None)
  hidden = np.asarray(t5.T5Encoder(cfg).apply({"params": params}, inp), np.float64)
  emb = np.asarray(params["token_embedder"]["embedding"], np.float64)
  logits = hidden @ emb.T * 32 ** -0.5
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  ce = log_z - np.take_along_axis(logits, tok[..., None], -1)[..., 0]
  w = weights.astype(bool)
  assert float(metrics["cross_entropy"]) == pytest.approx(ce[w].mean(), rel=1e-4)
  assert float(loss) == pytest.approx(ce[w].mean() + 1e-4 * (log_z[w] ** 2).mean(), rel=1e-4)
  acc = (logits.argmax(-1) == tok)[w].mean()
  assert float(metrics["masked_residue_accuracy"]) == pytest.approx(acc)
  assert float(metrics["num_tokens"]) == w.sum()


def test_encoder_mlm_seeded_from_a_prott5_run(acid_run, tmp_path):
  """--seed_encoder_from: the encoder-only investigation starts from the ProtT5
  run's encoder (fresh head and optimiser), not from a random init; a run of
  another shape is refused."""
  import jax
  from protjax.export import load_training_run
  from protjax.models import t5
  acid, argv, root, _ = acid_run
  seed_dir = root / "work" / "pretrain"
  seed = t5.encoder_params(load_training_run(seed_dir)[0])
  moved = {"--work_dir": str(tmp_path / "work"), "--out": str(tmp_path / "out")}
  mlm_argv = [moved.get(prev, a) for prev, a in zip([None] + argv, argv)]
  mlm_argv += ["--objective", "encoder_mlm", "--seed_encoder_from", str(seed_dir),
               "--gin", "linear_warmup_decay.peak_rate = 1e-8"]  # steps that barely move
  args = acid.build_parser().parse_args(mlm_argv)
  pre = acid.pretrain(args, str(tmp_path / "work"))
  assert pre["seed_encoder_from"] == str(seed_dir) and 1 <= pre["final_step"] <= 3
  params, config = load_training_run(tmp_path / "work" / "pretrain")
  assert sorted(params) == ["encoder", "mlm_head", "token_embedder"]
  assert params["mlm_head"]["kernel"].shape == (config.d_model, config.vocab_size)
  # The held-out control is the same shape: a random encoder with a random head.
  assert pre["heldout_random_init_params"] == ["encoder", "mlm_head", "token_embedder"]
  # The encoder is the seed's (a step or two at rate 1e-8 barely moves it),
  # not a random init of the same shape (the seed's one step at rate 0.01
  # already moved every weight by far more than the tolerance).
  fresh = acid.EncoderMLM(config).init_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 8)})["params"]
  for path, trained in _leaves(t5.encoder_params(params)):
    np.testing.assert_allclose(trained, dict(_leaves(seed))[path], rtol=1e-5, atol=1e-7)
    assert not np.allclose(dict(_leaves(fresh))[path], dict(_leaves(seed))[path], rtol=1e-3)
  # The report's objective line names the seed.
  report = acid.markdown({**acid_run[3], "pretraining": acid.whole_run(pre)})
  assert str(seed_dir) in report and "random encoder through a random head" in report
  # The seed must have this run's shape.
  wide = mlm_argv + ["--gin", "T5Config.d_model = 48"]
  with pytest.raises(SystemExit, match="model config differs"):
    acid.pretrain(acid.build_parser().parse_args(wide), str(tmp_path / "work2"))


def _leaves(tree):
  import jax
  return [(jax.tree_util.keystr(p), np.asarray(x))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def test_diagnostics_and_investigations_in_the_report(acid_run, tmp_path):
  """bench/acid_diagnostics.py on the run's caches, then a re-render that lists
  it and another run (here the same one) as an investigation."""
  acid, argv, root, rep = acid_run
  spec = importlib.util.spec_from_file_location("acid_diagnostics",
                                                REPO / "bench" / "acid_diagnostics.py")
  diag = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(diag)
  work = root / "work"
  assert diag.main(["--work_dir", str(work), "--ss_max_epochs", "2", "--ss_patience", "1"]) == 0
  with open(work / "diagnostics.json") as f:
    d = json.load(f)
  assert sorted(d) == ["onehot", "random_lm", "trained_lm"]
  # One-hot features name the residue exactly (X and rare letters aside).
  assert d["onehot"]["identity_accuracy"] > 95.0
  for kind in d:
    assert 0.0 <= d[kind]["linear_q3_window7"] <= 100.0
    assert d[kind]["cnn_standardised_q3"]["se"] >= 0.0
  other = tmp_path / "other.json"
  other.write_text((root / "out" / "acid_test.json").read_text())
  assert acid.main(argv + ["--investigation", str(other)]) == 0
  md = (root / "out" / "acid_test.md").read_text()
  assert "## Diagnostics" in md and "## Investigation" in md
  assert "d_model 32, 2+2 layers" in md
  row = next(l for l in md.splitlines() if l.startswith("| `python bench/acid_test.py"))
  assert "% | 20 | " in row  # the investigated run's NetSurfP-2.0 probe chains


def test_copy_transition_placed_in_the_run_that_had_it():
  """A fresh run names the step where copying began; a continuation that
  starts already copying says the transition came in the run it continues."""
  acid = _load_script()

  def pre(start_step, accuracies):
    return {"objective": "prott5", "run_start_step": start_step,
            "eval_history": {str(s): {"accuracy": a} for s, a in accuracies}}

  fresh = acid.copy_transition(pre(0, [(100, 0.15), (200, 0.21), (300, 0.6), (400, 0.8)]))
  assert "rose from 21% at step 200 to 60% at step 300" in fresh
  continued = acid.copy_transition(pre(9750, [(9800, 0.86), (9900, 0.87)]))
  assert "already copying" in continued and "step 9800" in continued
  assert "rose" not in continued
  never = acid.copy_transition(pre(0, [(100, 0.15), (200, 0.2)]))
  assert never.startswith("The decoder never learned")
