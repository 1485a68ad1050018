"""protjax-embed: batching, the embed loop, the T5 path, resume and bad input."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from protjax import embed
from protjax.errors import InputError
from protjax.vocab import ProtT5Vocabulary

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def random_seq(rng: random.Random, n: int) -> str:
  return "".join(rng.choice(RESIDUES) for _ in range(n))


# --------------------------------------------------------------------------
# Batching (no model).
# --------------------------------------------------------------------------
def test_bucket_ladder_and_long_lengths():
  b = embed.Batching(token_budget=4096)
  assert b.bucket(1) == 32
  assert b.bucket(32) == 32
  assert b.bucket(33) == 48
  assert b.bucket(65) == 96           # a 64-residue protein + </s>
  assert b.bucket(4096) == 4096
  assert not b.is_long(4096)
  assert b.bucket(4097) == 8192       # above the ladder: multiples of 4096
  assert b.is_long(8192)
  assert b.bucket(35001) == 36864     # a 35,000-residue protein


def test_batch_sizes_are_multiples_of_the_shard_count():
  b = embed.Batching(token_budget=1000, num_shards=8)
  assert b.batch_size(32) == 24       # 1000 // 32 = 31 -> 24
  assert b.batch_size(512) == 8       # 1 row fits the budget; one per shard
  assert b.batch_size(8192) == 8      # long: one protein per shard
  b1 = embed.Batching(token_budget=1000, num_shards=1)
  assert b1.batch_size(32) == 31
  assert b1.batch_size(2048) == 1


def test_plan_sorted_covers_every_protein_once_with_few_shapes():
  rng = random.Random(0)
  lengths = [rng.randint(1, 5000) for _ in range(700)]
  b = embed.Batching(token_budget=8192, num_shards=4)
  plan = b.plan(lengths)
  flat = [i for _, idx in plan for i in idx]
  assert sorted(flat) == list(range(len(lengths)))
  # Longest first, every protein fits its bucket, batches within their size.
  assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
  for bucket, idx in plan:
    assert all(lengths[i] <= bucket for i in idx)
    assert len(idx) <= b.batch_size(bucket)
    assert bucket * b.batch_size(bucket) <= max(8192, bucket * 4)
  shapes = {(bucket, b.batch_size(bucket)) for bucket, _ in plan}
  assert len(shapes) <= len(embed.DEFAULT_LADDER) + 1   # + one long bucket (8192)
  # Only the last batch of each bucket may be short.
  for k, (bucket, idx) in enumerate(plan[:-1]):
    if plan[k + 1][0] == bucket:
      assert len(idx) == b.batch_size(bucket)


def test_pad_batch_dummy_rows_hold_eos():
  rows = [np.array([5, 6, 1], np.int32), np.array([7, 1], np.int32)]
  out = embed.pad_batch(rows, 4, 3)
  np.testing.assert_array_equal(out, [[5, 6, 1, 0], [7, 1, 0, 0], [1, 0, 0, 0]])
  assert out.dtype == np.int32
  with pytest.raises(ValueError):
    embed.pad_batch(rows, 2, 3)


def test_tokenize_appends_eos():
  np.testing.assert_array_equal(embed.tokenize("ALG", ProtT5Vocabulary()), [3, 4, 5, 1])


# --------------------------------------------------------------------------
# The embed loop against a fake, padding-sensitive encoder.
# --------------------------------------------------------------------------
def fake_encode(tokens):
  """[b, l] -> [b, l, 4]: token id, position, and the mean id of the row's
  non-pad tokens, so a leak of padding or of another row changes the output."""
  tokens = np.asarray(tokens)
  mask = (tokens != 0).astype(np.float32)
  ctx = (tokens * mask).sum(1, keepdims=True) / mask.sum(1, keepdims=True)
  pos = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.float32), tokens.shape)
  return np.stack([tokens.astype(np.float32), pos, np.broadcast_to(ctx, tokens.shape),
                   tokens * ctx], axis=-1)


def test_embed_loop_equals_each_sequence_alone():
  rng = random.Random(1)
  records = [(f"p{i}", random_seq(rng, n)) for i, n in
             enumerate([5, 31, 32, 33, 100, 7, 47, 250, 1, 64])]
  vocab = ProtT5Vocabulary()
  calls = []

  def encode(tokens):
    calls.append(tokens.shape)
    return fake_encode(tokens)

  out = list(embed.embed_loop(records, embed.pooled_run_batch(encode),
                              embed.Batching(token_budget=200, num_shards=2),
                              vocab=vocab))
  assert sorted(r[0] for r in out) == sorted(r[0] for r in records)
  seqs = dict(records)
  for rid, res, prot in out:
    alone = fake_encode(embed.tokenize(seqs[rid], vocab)[None])[0]
    assert res.shape == (len(seqs[rid]), 4)
    np.testing.assert_allclose(res, alone[:-1], rtol=1e-6)       # </s> row dropped
    np.testing.assert_allclose(prot, alone[:-1].mean(0), rtol=1e-5)
  # Fixed shapes only: every batch is (batch_size(bucket), bucket).
  b = embed.Batching(token_budget=200, num_shards=2)
  assert all(shape == (b.batch_size(shape[1]), shape[1]) for shape in calls)
  assert len(set(calls)) <= 5


def test_embed_loop_routes_long_buckets():
  records = [("short", "A" * 10), ("long", "L" * 70)]
  seen = {"short": [], "long": []}

  def run(kind):
    def f(tokens):
      seen[kind].append(tokens.shape)
      return embed.pooled_run_batch(fake_encode)(tokens)
    return f

  out = list(embed.embed_loop(records, run("short"),
                              embed.Batching(token_budget=64, ladder=(16, 32), long_threshold=32,
                                             long_step=16, num_shards=2),
                              run_long=run("long")))
  assert seen == {"short": [(4, 16)], "long": [(2, 80)]}
  assert [r[0] for r in out] == ["long", "short"]


@pytest.mark.parametrize("seq,problem", [
    ("", "empty sequence"),
    ("A" * 11, "longer than --max_length 10"),
    ("AC1D", "invalid residue '1'"),
])
def test_validate_records_names_record_and_problem(seq, problem):
  with pytest.raises(InputError) as e:
    embed.validate_records([("ok", "ACD"), ("bad|id", seq)], max_length=10,
                           path="in.fasta")
  msg = str(e.value)
  assert "in.fasta" in msg and "'bad|id'" in msg and problem in msg
  assert "\n" not in msg


def test_validate_records_rejects_duplicates():
  with pytest.raises(InputError, match="duplicate"):
    embed.validate_records([("a", "ACD"), ("a", "ACD")], max_length=10)
