"""T5 relative position buckets, as an exact integer lookup table.

T5 maps a relative distance to one of `num_buckets` buckets: small distances
get a bucket each, larger ones share logarithmically wider buckets, and every
distance from `max_distance` on shares the last bucket. Computing the
logarithm on the device can round a boundary case (e.g. distance 16 -> 1.9999)
into a different bucket than the reference implementation does, so the
buckets are tabulated once on the host for distances 0..max_distance and the
device only gathers from the table: exact, and cheap enough to do per block
in blockwise attention.
"""
from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def _one_sided_buckets(num_buckets: int, max_distance: int) -> np.ndarray:
  """Bucket of each non-negative distance 0..max_distance, `[max_distance + 1]` int32."""
  max_exact = num_buckets // 2
  distance = np.arange(max_distance + 1)
  # float32 arithmetic in the reference's order, so boundary cases round alike.
  scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(max_exact + scaled, num_buckets - 1)
  return np.where(distance < max_exact, distance, large).astype(np.int32)


def relative_position_bucket(relative_position: jnp.ndarray, *, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> jnp.ndarray:
  """Bucket ids for `relative_position = key_position - query_position`.

  Args:
    relative_position: int array of any shape.
    bidirectional: encoder self-attention (True) splits the buckets between
      keys before and after the query; causal decoder attention (False) uses
      them all for keys at or before the query.
  Returns:
    int32 array of the same shape with values in [0, num_buckets).
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  if bidirectional:
    half = num_buckets // 2
    table = jnp.asarray(_one_sided_buckets(half, max_distance))
    offset = jnp.where(relative_position > 0, half, 0)
    distance = jnp.abs(relative_position)
  else:
    table = jnp.asarray(_one_sided_buckets(num_buckets, max_distance))
    offset = 0
    distance = -jnp.minimum(relative_position, 0)
  return offset + table[jnp.minimum(distance, max_distance)]
