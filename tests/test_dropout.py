"""Dropout masks drawn four (threefry) or two (other PRNGs) elements per random word."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax.models import layers


@pytest.mark.parametrize("shape", [(1000, 1001), (4, 8, 64, 63), (7,)])
def test_keep_rate_matches_bernoulli(shape):
  keep = np.asarray(layers.dropout_keep_mask(jax.random.PRNGKey(3), 0.1, shape))
  assert keep.shape == shape and keep.dtype == np.bool_
  n = keep.size
  expected = 1.0 - round(0.1 * 65536) / 65536  # quantised to 1/65536
  # 5 binomial standard deviations.
  assert abs(keep.mean() - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12


def test_mask_is_deterministic_and_key_dependent():
  a = layers.dropout_keep_mask(jax.random.PRNGKey(0), 0.3, (64, 128))
  b = layers.dropout_keep_mask(jax.random.PRNGKey(0), 0.3, (64, 128))
  c = layers.dropout_keep_mask(jax.random.PRNGKey(1), 0.3, (64, 128))
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).mean() > 0.2
  # Typed threefry keys give the same mask as raw ones.
  np.testing.assert_array_equal(a, layers.dropout_keep_mask(jax.random.key(0), 0.3, (64, 128)))


def test_neighbouring_elements_are_not_correlated():
  # The four 16-bit pieces of one threefry output land next to each other
  # on the last axis; their masks must be independent.
  keep = np.asarray(layers.dropout_keep_mask(jax.random.PRNGKey(5), 0.5, (512, 1024)), np.float64)
  corr = np.corrcoef(keep[:, :-1].ravel(), keep[:, 1:].ravel())[0, 1]
  assert abs(corr) < 0.01
  # And different rows are different draws.
  assert (keep[0] != keep[1]).mean() > 0.4


def test_other_prng_falls_back_to_random_bits():
  keep = np.asarray(layers.dropout_keep_mask(jax.random.key(0, impl="rbg"), 0.25, (256, 257)))
  assert keep.shape == (256, 257)
  assert abs(keep.mean() - 0.75) < 0.01


def test_dropout_scales_kept_values_and_is_identity_without_rng():
  x = jnp.ones((128, 256), jnp.float32)
  y = np.asarray(layers.dropout(x, 0.2, jax.random.PRNGKey(2)))
  kept = y[y != 0]
  np.testing.assert_allclose(kept, 1.0 / 0.8, rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.02
  np.testing.assert_array_equal(layers.dropout(x, 0.2, None), x)
  np.testing.assert_array_equal(layers.dropout(x, 0.0, jax.random.PRNGKey(2)), x)
