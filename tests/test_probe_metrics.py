"""Q3/Q8/Q10/Q2 scoring against hand-computed values, incl. the CB513 mask rule."""
from __future__ import annotations

import numpy as np
import pytest

from protjax import featurize
from protjax.probes import data as pdata
from protjax.probes import metrics


def test_cb513_mask_rule_and_pooled_q3_by_hand(tmp_path, fixtures_dir):
  csv = fixtures_dir / "probes" / "tiny_ss.csv"
  h5 = tmp_path / "e.h5"
  featurize.featurize_records("onehot", [("0", "MKTAY"), ("1", "GSEVIL"), ("2", "ALEX")], h5)
  cb = pdata.load_residue_set(h5, csv, cb513=True)
  plain = pdata.load_residue_set(h5, csv, cb513=False)
  # disorder==1 and cb513_mask==1, worked out from the fixture's columns:
  assert [m.tolist() for m in cb.score_mask] == [
      [False, False, True, True, True], [True, True, True, True, False, False],
      [True, True, True, True]]
  assert sum(int(m.sum()) for m in plain.score_mask) == 4 + 5 + 4
  # Training mask ignores cb513_mask: resolved residues only.
  assert [int(m.sum()) for m in cb.train_mask] == [4, 5, 4]
  # Predict H (class 0) everywhere. Scored true labels under the CB513 rule:
  # P0 [H H C] -> 2, P1 [C C E E] -> 0, P2 [H H H C] -> 3: 5 of 11.
  pred = [np.zeros_like(t) for t in cb.dssp3]
  s = metrics.score_residues(cb.dssp3, pred, cb.score_mask, "HEC")
  assert s["accuracy"] == pytest.approx(100 * 5 / 11)
  assert s["n_residues"] == 11 and s["n_proteins"] == 3
  # Without the CB513 rule: P0 [H H H C] 3, P1 [C C E E E] 0, P2 3: 6 of 13.
  s = metrics.score_residues(plain.dssp3, pred, plain.score_mask, "HEC")
  assert s["accuracy"] == pytest.approx(100 * 6 / 13)
  assert s["per_class"]["H"] == {"precision": pytest.approx(100 * 6 / 13),
                                 "recall": 100.0, "support": 6}
  assert s["per_class"]["E"]["precision"] is None and s["per_class"]["E"]["recall"] == 0.0
  # Q8 with the true labels as predictions is 100 %, with SE 0.
  s8 = metrics.score_residues(cb.dssp8, cb.dssp8, cb.score_mask, pdata.DSSP8)
  assert s8["accuracy"] == 100.0 and s8["se"] == 0.0


def test_per_class_precision_recall_by_hand():
  t = np.array([0, 0, 1, 2, 2, 2])
  p = np.array([0, 1, 1, 2, 2, 0])
  s = metrics.score_proteins(t, p, np.ones(6, bool), ["a", "b", "c"])
  assert s["accuracy"] == pytest.approx(400 / 6)
  pc = s["per_class"]
  assert (pc["a"]["precision"], pc["a"]["recall"]) == (50.0, 50.0)
  assert (pc["b"]["precision"], pc["b"]["recall"]) == (50.0, 100.0)
  assert pc["c"]["precision"] == 100.0 and pc["c"]["recall"] == pytest.approx(200 / 3)
  assert s["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_masked_proteins_do_not_count():
  t = np.array([0, 1, 1, 0])
  p = np.array([0, 0, 1, 1])
  s = metrics.score_proteins(t, p, np.array([True, False, True, False]), ["x", "y"])
  assert s["accuracy"] == 100.0 and s["n_proteins"] == 2


def test_bootstrap_se_matches_binomial_theory():
  # Per-protein 0/1 outcomes: the bootstrap SE of the mean is close to
  # sqrt(p (1 - p) / n) (here 2.165 %).
  n = 400
  correct = (np.arange(n) % 4 != 0).astype(float)  # p = 0.75
  se = metrics.bootstrap_se(correct, np.ones(n))
  assert se == pytest.approx(100 * np.sqrt(0.75 * 0.25 / n), rel=0.08)
  assert metrics.bootstrap_se(correct, np.ones(n)) == se  # fixed seed
  assert metrics.bootstrap_se(correct, np.ones(n), seed=1) != se


def test_bootstrap_resamples_proteins_not_residues():
  # Every protein 80 % correct: resampling proteins cannot move the pooled
  # accuracy, so the SE is 0 (a residue bootstrap would give ~1.3 %).
  correct = np.array([8, 16, 40, 80])
  total = np.array([10, 20, 50, 100])
  assert metrics.bootstrap_se(correct, total) == pytest.approx(0.0, abs=1e-9)
  # Proteins with no scored residue take no part: one protein left, no SE.
  assert np.isnan(metrics.bootstrap_se(np.array([8, 0]), np.array([10, 0])))
  assert metrics.bootstrap_se(np.array([8, 0]), np.array([10, 5])) > 10


def test_paired_bootstrap_se_cancels_what_two_probes_share():
  rng = np.random.default_rng(0)
  n = 400
  total = rng.integers(20, 200, n)
  difficulty = rng.uniform(0.3, 0.95, n)  # per protein, shared by both probes
  a = rng.binomial(total, difficulty)
  b = np.maximum(a - rng.binomial(total, 0.02), 0)  # a few residues worse
  unpaired = np.hypot(metrics.bootstrap_se(a, total), metrics.bootstrap_se(b, total))
  paired = metrics.paired_bootstrap_se(a, b, total)
  # The shared difficulty dominates each SE and cancels in the difference.
  assert paired < unpaired / 5
  # By hand: the SE of the pooled difference over the same resampled proteins.
  idx = np.random.default_rng(metrics.BOOTSTRAP_SEED).integers(0, n, size=(1000, n))
  by_hand = 100 * ((a - b)[idx].sum(1) / total[idx].sum(1)).std(ddof=1)
  assert paired == pytest.approx(by_hand, rel=1e-9)
  # Unrelated probes: nothing to cancel, the paired SE is the unpaired one.
  c = rng.binomial(total, rng.uniform(0.3, 0.95, n))
  unrelated = np.hypot(metrics.bootstrap_se(a, total), metrics.bootstrap_se(c, total))
  assert metrics.paired_bootstrap_se(a, c, total) == pytest.approx(unrelated, rel=0.15)
  assert metrics.paired_bootstrap_se(a, a, total) == 0.0


def test_score_residues_keeps_per_protein_counts_in_order():
  t = [np.array([0, 1, 2, 0]), np.array([1, 1]), np.array([2, 2, 2])]
  p = [np.array([0, 1, 0, 0]), np.array([0, 0]), np.array([2, 2, 1])]
  m = [np.array([True, True, True, False]), np.array([False, False]), np.ones(3, bool)]
  s = metrics.score_residues(t, p, m, ["H", "E", "C"])
  assert s["per_protein"] == {"correct": [2, 0, 2], "total": [3, 0, 3]}
  assert s["accuracy"] == pytest.approx(100 * 4 / 6)
