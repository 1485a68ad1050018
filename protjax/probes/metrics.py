"""Scores for the probes: Q3/Q8 (pooled over residues), Q10/Q2 (over proteins).

Accuracies are percentages. Standard errors come from a bootstrap that
resamples PROTEINS with replacement (1,000 resamples, numpy RNG, fixed seed):
residues of one chain are correlated, so resampling residues independently
would understate the error. For per-residue tasks each resample's accuracy is
pooled (correct residues / scored residues of the resampled proteins), the
same pooling as the point estimate; proteins with no scored residue take no
part. The SE is the standard deviation (ddof=1) of the resampled accuracies.

Scoring rules (data/README.md): a residue counts where `disorder == 1`
(resolved) and, for CB513, also `cb513_mask == 1`; see `residue_score_mask`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def residue_score_mask(disorder: Optional[np.ndarray], cb513_mask: Optional[np.ndarray],
                       length: int, *, cb513: bool) -> np.ndarray:
  """`[length]` bool: residues that count for Q3/Q8.

  Resolved residues only (`disorder == 1`; all residues when the column is
  absent); with `cb513=True` also `cb513_mask == 1` (which must then exist).
  """
  mask = np.ones(length, bool) if disorder is None else np.asarray(disorder) == 1
  if cb513:
    if cb513_mask is None:
      raise ValueError("cb513=True needs the cb513_mask column")
    mask &= np.asarray(cb513_mask) == 1
  return mask


def bootstrap_se(correct: np.ndarray, total: np.ndarray, *, n_resamples: int = N_BOOTSTRAP,
                 seed: int = BOOTSTRAP_SEED) -> float:
  """Bootstrap standard error (percent) of the pooled accuracy sum(correct)/sum(total).

  Args:
    correct: `[items]` correct predictions per item (protein).
    total: `[items]` scored predictions per item; items with 0 are ignored.
  """
  return _resampled_se(np.asarray(correct, np.float64), total, n_resamples, seed)


def paired_bootstrap_se(correct_a: np.ndarray, correct_b: np.ndarray, total: np.ndarray, *,
                        n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> float:
  """Bootstrap SE (percent) of accuracy A - accuracy B, two predictors scored on
  the same items: each resample draws the same proteins for both, so what
  they share (a chain hard for one is hard for the other) cancels, where the
  unpaired sqrt(se_a**2 + se_b**2) counts it twice.

  Args:
    correct_a, correct_b: `[items]` correct predictions per item of each.
    total: `[items]` scored predictions per item (the same for both).
  """
  diff = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)
  return _resampled_se(diff, total, n_resamples, seed)


def _resampled_se(correct: np.ndarray, total, n_resamples: int, seed: int) -> float:
  """Std (ddof=1, percent) of sum(correct[idx]) / sum(total[idx]) over resamples."""
  total = np.asarray(total, np.float64)
  keep = total > 0
  correct, total = correct[keep], total[keep]
  n = correct.shape[0]
  if n < 2 or n_resamples < 2:
    return float("nan")
  rng = np.random.default_rng(seed)
  accs = np.empty(n_resamples)
  chunk = max(1, min(n_resamples, 2_000_000 // n))  # bounds memory for big sets
  for start in range(0, n_resamples, chunk):
    stop = min(n_resamples, start + chunk)
    idx = rng.integers(0, n, size=(stop - start, n))
    accs[start:stop] = correct[idx].sum(1) / total[idx].sum(1)
  return float(100.0 * accs.std(ddof=1))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
  """`[n_classes (true), n_classes (predicted)]` int64 counts."""
  y_true = np.asarray(y_true, np.int64)
  y_pred = np.asarray(y_pred, np.int64)
  return np.bincount(y_true * n_classes + y_pred,
                     minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class(cm: np.ndarray, class_names: Sequence[str]) -> dict:
  """Precision / recall (percent, None when undefined) and support per class."""
  out = {}
  for i, name in enumerate(class_names):
    tp = int(cm[i, i])
    pred = int(cm[:, i].sum())
    true = int(cm[i, :].sum())
    out[name] = {
        "precision": 100.0 * tp / pred if pred else None,
        "recall": 100.0 * tp / true if true else None,
        "support": true,
    }
  return out


def score_residues(y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray],
                   masks: Sequence[np.ndarray], class_names: Sequence[str], *,
                   n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict:
  """Per-residue accuracy pooled over residues, with a protein bootstrap SE.

  Args:
    y_true, y_pred: per protein, `[length]` int class ids.
    masks: per protein, `[length]` bool, residues that count.
    class_names: names of the class ids.

  Returns:
    dict: accuracy, se (percent), n_residues, n_proteins (with >= 1 scored
    residue), per_class, confusion (list of lists, rows = true class),
    per_protein ({"correct", "total"}: scored residues of each protein, in
    input order, for paired comparisons of two probes on the same set).
  """
  n_classes = len(class_names)
  correct = np.array([int(((t == p) & m).sum()) for t, p, m in zip(y_true, y_pred, masks)])
  total = np.array([int(np.asarray(m).sum()) for m in masks])
  if total.sum() == 0:
    raise ValueError("no scored residues")
  t_all = np.concatenate([np.asarray(t)[np.asarray(m, bool)] for t, m in zip(y_true, masks)])
  p_all = np.concatenate([np.asarray(p)[np.asarray(m, bool)] for p, m in zip(y_pred, masks)])
  cm = confusion_matrix(t_all, p_all, n_classes)
  return {
      "accuracy": float(100.0 * correct.sum() / total.sum()),
      "se": bootstrap_se(correct, total, n_resamples=n_resamples, seed=seed),
      "n_residues": int(total.sum()),
      "n_proteins": int((total > 0).sum()),
      "per_class": per_class(cm, class_names),
      "confusion": cm.tolist(),
      "per_protein": {"correct": correct.tolist(), "total": total.tolist()},
  }


def score_proteins(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray,
                   class_names: Sequence[str], *, n_resamples: int = N_BOOTSTRAP,
                   seed: int = BOOTSTRAP_SEED) -> dict:
  """Per-protein accuracy (Q10, Q2) over proteins where `mask`, bootstrap SE.

  Returns the same keys as `score_residues` (n_residues omitted).
  """
  y_true = np.asarray(y_true)
  y_pred = np.asarray(y_pred)
  mask = np.asarray(mask, bool)
  if not mask.any():
    raise ValueError("no labelled proteins to score")
  t, p = y_true[mask], y_pred[mask]
  correct = (t == p).astype(np.float64)
  cm = confusion_matrix(t, p, len(class_names))
  return {
      "accuracy": float(100.0 * correct.mean()),
      "se": bootstrap_se(correct, np.ones_like(correct), n_resamples=n_resamples, seed=seed),
      "n_proteins": int(mask.sum()),
      "per_class": per_class(cm, class_names),
      "confusion": cm.tolist(),
  }
