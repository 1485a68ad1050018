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
from protjax.models import registry

T5_VOCAB = registry.get_family("prott5").vocabulary()
BERT_VOCAB = registry.get_family("protbert").vocabulary()

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


def test_plan_covers_every_protein_once_with_few_shapes():
  # Protein-like lengths (log-normal, median 350) and a few beyond the ladder.
  rng = np.random.default_rng(0)
  lengths = [int(np.clip(x, 2, 5000)) for x in rng.lognormal(np.log(350), 0.8, 700)]
  for pack in (False, True):
    b = embed.Batching(token_budget=8192, num_shards=4, pack=pack)
    plan = b.plan(lengths)
    flat = [i for batch in plan for i in batch.indices]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in plan:
      assert len(batch.rows) <= b.batch_size(batch.length)
      assert batch.length * b.batch_size(batch.length) <= max(8192, batch.length * 4)
      for row in batch.rows:
        # A row's proteins fit it; the first, its longest, set its length.
        assert sum(lengths[i] for i in row) <= batch.length
        assert b.bucket(lengths[row[0]]) == batch.length
        assert all(lengths[i] <= lengths[row[0]] for i in row)
        assert len(row) <= (b.max_per_row if pack and not b.is_long(batch.length) else 1)
    shapes = {(batch.length, b.batch_size(batch.length)) for batch in plan}
    assert len(shapes) <= len(embed.DEFAULT_LADDER) + 1   # + one long bucket (8192)
    # Longest rows first; only the last batch of each length may be short.
    assert [batch.length for batch in plan] == sorted((x.length for x in plan), reverse=True)
    for k, batch in enumerate(plan[:-1]):
      if plan[k + 1].length == batch.length:
        assert len(batch.rows) == b.batch_size(batch.length)
    padded = sum(batch.length * b.batch_size(batch.length) for batch in plan)
    if pack:
      packed_padding = 1 - sum(lengths) / padded
    else:
      unpacked_padding = 1 - sum(lengths) / padded
  assert packed_padding < 0.7 * unpacked_padding   # 19% vs 30% here (dummy rows included)


def test_packing_fills_rows_with_shorter_proteins():
  b = embed.Batching(token_budget=256, ladder=(32, 64, 128), num_shards=1)
  plan = b.plan([100, 20, 30, 60, 10])
  # Longest first: 100 opens a 128 row (28 free), 60 a 64 row (4 free), 30 a
  # 32 row (2 free); 20 best-fits the 28 left beside 100; 10 fits nowhere
  # (8, 4, 2 free) and opens a 32 row of its own.
  assert [batch.rows for batch in plan] == [[[0, 1]], [[3]], [[2], [4]]]
  assert [batch.length for batch in plan] == [128, 64, 32]


def test_pad_batch_packs_rows_and_dummy_rows_hold_an_empty_frame():
  rows = [[np.array([5, 6, 1], np.int32), np.array([7, 1], np.int32)],
          [np.array([8, 1], np.int32)]]
  out = embed.pad_batch(rows, 6, 3, T5_VOCAB)
  np.testing.assert_array_equal(out["tokens"], [[5, 6, 1, 7, 1, 0], [8, 1, 0, 0, 0, 0],
                                                [1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 0, 0, 0, 0],
                                                     [1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 0, 0, 0, 0],
                                                   [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["residue_mask"], [[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0],
                                                      [0, 0, 0, 0, 0, 0]])
  assert out["tokens"].dtype == np.int32
  bert = embed.pad_batch([[BERT_VOCAB.frame("LA"), BERT_VOCAB.frame("G")]], 8, 2, BERT_VOCAB)
  np.testing.assert_array_equal(bert["tokens"], [[2, 5, 6, 3, 2, 7, 3, 0], [2, 3] + [0] * 6])
  np.testing.assert_array_equal(bert["residue_mask"], [[0, 1, 1, 0, 0, 1, 0, 0], [0] * 8])
  with pytest.raises(ValueError):
    embed.pad_batch(rows, 4, 3, T5_VOCAB)


def test_framing_of_each_family():
  np.testing.assert_array_equal(T5_VOCAB.frame("ALG"), [3, 4, 5, 1])
  np.testing.assert_array_equal(BERT_VOCAB.frame("LAG"), [2, 5, 6, 7, 3])


# --------------------------------------------------------------------------
# The embed loop against a fake, packing-sensitive encoder.
# --------------------------------------------------------------------------
def fake_encode(tokens, segment_ids, positions):
  """[b, l] -> [b, l, 4]: token id, position, and the mean id over the token's
  own protein (its segment), so a leak of padding, of another protein packed
  in the row or of another row changes the output."""
  tokens = np.asarray(tokens, np.float32)
  same = segment_ids[:, :, None] == segment_ids[:, None, :]            # [b, l, l]
  same &= (segment_ids > 0)[:, None, :]
  ctx = (same * tokens[:, None, :]).sum(-1) / np.maximum(same.sum(-1), 1)
  return np.stack([tokens, positions.astype(np.float32), ctx, tokens * ctx], axis=-1)


def test_embed_loop_equals_each_sequence_alone():
  rng = random.Random(1)
  records = [(f"p{i}", random_seq(rng, n)) for i, n in
             enumerate([5, 31, 32, 33, 100, 7, 47, 250, 1, 64])]
  calls = []

  def encode(tokens, segment_ids, positions):
    calls.append((tokens.shape, int(segment_ids.max())))
    return fake_encode(tokens, segment_ids, positions)

  for vocab in (T5_VOCAB, BERT_VOCAB):
    calls.clear()
    batching = embed.Batching(token_budget=200, num_shards=2)
    out = list(embed.embed_loop(records, embed.pooled_run_batch(encode), batching, vocab))
    assert sorted(r[0] for r in out) == sorted(r[0] for r in records)
    seqs = dict(records)
    first = len(vocab.prefix_ids)
    for rid, res, prot in out:
      tokens = vocab.frame(seqs[rid])[None]
      alone = fake_encode(tokens, np.ones_like(tokens), np.arange(tokens.shape[1])[None])[0]
      residues = alone[first:first + len(seqs[rid])]  # framing tokens' rows dropped
      assert res.shape == (len(seqs[rid]), 4)
      np.testing.assert_allclose(res, residues, rtol=1e-6)
      np.testing.assert_allclose(prot, residues.mean(0), rtol=1e-5)
    # Fixed shapes only, every batch (batch_size(length), length); and packed.
    assert all(shape == (batching.batch_size(shape[1]), shape[1]) for shape, _ in calls)
    assert len({shape for shape, _ in calls}) <= 6   # one per ladder length used
    assert max(segments for _, segments in calls) > 1


def test_skipped_proteins_are_planned_but_not_run_or_yielded():
  rng = random.Random(2)
  records = [(f"p{i}", random_seq(rng, n)) for i, n in enumerate([90, 20, 60, 10, 30])]
  batching = embed.Batching(token_budget=128, ladder=(32, 64, 128), num_shards=1)
  runs = []

  def encode(tokens, segment_ids, positions):
    runs.append(tokens.copy())
    return fake_encode(tokens, segment_ids, positions)

  full = {rid: res for rid, res, _ in embed.embed_loop(
      records, embed.pooled_run_batch(encode), batching, T5_VOCAB)}
  all_batches, runs[:] = list(runs), []
  skip = {"p0", "p1", "p2"}
  resumed = {rid: res for rid, res, _ in embed.embed_loop(
      records, embed.pooled_run_batch(encode), batching, T5_VOCAB, skip=skip)}
  assert sorted(resumed) == ["p3", "p4"]
  for rid in resumed:
    np.testing.assert_array_equal(resumed[rid], full[rid])
  # The batches that ran are exactly the uninterrupted run's that hold a new one.
  assert 0 < len(runs) < len(all_batches)
  assert all(any(np.array_equal(r, a) for a in all_batches) for r in runs)


def test_embed_loop_routes_long_buckets():
  records = [("short", "A" * 10), ("long", "L" * 70)]
  seen = {"short": [], "long": []}

  def run(kind):
    def f(batch):
      seen[kind].append(batch["tokens"].shape)
      return embed.pooled_run_batch(fake_encode)(batch)
    return f

  out = list(embed.embed_loop(records, run("short"),
                              embed.Batching(token_budget=64, ladder=(16, 32), long_threshold=32,
                                             long_step=16, num_shards=2), T5_VOCAB,
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
  # Ids that would share one HDF5 dataset name are refused before any output.
  with pytest.raises(InputError, match="same HDF5 dataset name"):
    embed.validate_records([("a/b", "ACD"), ("a_b", "ACD")], max_length=10)


# --------------------------------------------------------------------------
# The real model path (tiny T5, 8 fake CPU devices from conftest).
# --------------------------------------------------------------------------
import jax  # noqa: E402  (after the pure tests on purpose: they need no JAX)

from protjax import embeddings_io, export  # noqa: E402
from protjax.data.readers import read_fasta  # noqa: E402
from protjax.models import t5  # noqa: E402

TOKEN_BUDGET = 512   # small: several shapes from the 10-protein fixture


@pytest.fixture(scope="module")
def tiny():
  """(params, config): a random tiny encoder with 32-token attention blocks."""
  config = t5.get_config("tiny", attention_block_size=32)
  variables = t5.T5Encoder(config).init(jax.random.PRNGKey(0),
                                        np.ones((1, 8), np.int32))
  params = jax.tree.map(np.asarray, variables["params"])
  return params, config


@pytest.fixture(scope="module")
def embedder(tiny):
  params, config = tiny
  return embed.Embedder(params, config, model_name="tiny", token_budget=TOKEN_BUDGET)


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
  params, config = tiny
  return export.save_params_checkpoint(tmp_path_factory.mktemp("m") / "tiny", params, config)


@pytest.fixture
def fasta(fixtures_dir):
  return str(fixtures_dir / "embed" / "proteins.fasta")


_JITTED = {}


def encode_alone(params, config, seq, **overrides):
  """The encoder called directly on one unpadded sequence: `[n, d]` (no `</s>`).

  Plain `T5Encoder.apply` on `[1, n + 1]` tokens, jitted only for speed (op-by-op
  dispatch of 16 shapes takes over a minute).
  """
  cfg = dataclasses_replace(config, dropout_rate=0.0, **overrides)
  if cfg not in _JITTED:
    _JITTED[cfg] = jax.jit(lambda p, t: t5.T5Encoder(cfg).apply({"params": p}, t))
  tokens = T5_VOCAB.frame(seq)[None]
  return np.asarray(_JITTED[cfg](params, tokens))[0, :-1]


def dataclasses_replace(config, **kw):
  import dataclasses
  return dataclasses.replace(config, **kw)


def read_all(path):
  with embeddings_io.EmbeddingFile(path) as f:
    return f.attrs, {pid: f[pid] for pid in f.ids()}


def test_embed_fasta_equals_encoder_on_each_sequence_alone(embedder, tiny, fasta, tmp_path):
  params, config = tiny
  res_path, prot_path = tmp_path / "res.h5", tmp_path / "prot.h5"
  summary = embed.embed_fasta(embedder, fasta, per_residue=res_path, per_protein=prot_path)
  records = list(read_fasta(fasta))
  assert summary["embedded"] == len(records) == 10 and summary["skipped"] == 0
  res_attrs, res = read_all(res_path)
  prot_attrs, prot = read_all(prot_path)
  assert (res_attrs.model, res_attrs.dim, res_attrs.kind) == ("tiny", 32, "per_residue")
  assert prot_attrs.kind == "per_protein" and prot_attrs.options["dtype"] == "float32"
  assert set(res) == set(prot) == {rid for rid, _ in records}
  for rid, seq in records:
    alone = encode_alone(params, config, seq)
    assert res[rid].shape == (len(seq), 32) and res[rid].dtype == np.float32
    np.testing.assert_allclose(res[rid], alone, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(prot[rid], alone.mean(0), atol=2e-5, rtol=1e-5)
  # Batches were data-parallel over all 8 fake devices with fixed shapes: one
  # compiled program per bucket used, not one per batch.
  assert embedder.batching.num_shards == len(jax.local_devices()) == 8
  lengths = [len(s) + 1 for _, s in records]
  plan = embedder.batching.plan(lengths)
  fn = embedder.forward_fn(long=False, per_residue=True, per_protein=True)
  assert fn._cache_size() == len({batch.length for batch in plan})


def test_long_proteins_use_blockwise_attention_and_match(tiny):
  params, config = tiny
  emb = embed.Embedder(params, config, token_budget=TOKEN_BUDGET, long_threshold=64,
                       long_step=64, ladder=(32, 64))
  seqs = ["MKT" * 50, "ACDE" * 10]           # 151 tokens: long bucket 192; 41: 64
  out = emb.embed_sequences(seqs)
  assert emb.batching.is_long(emb.batching.bucket(151))
  assert emb.forward_fn(long=True, per_protein=False)._cache_size() == 1
  for seq, got in zip(seqs, out):
    # Reference: plain einsum attention over the unpadded sequence.
    np.testing.assert_allclose(got, encode_alone(params, config, seq,
                                                 attention_impl="einsum"),
                               atol=2e-5, rtol=1e-5)


def test_long_protein_memory_grows_linearly(tiny):
  """Compile-only: XLA's temp memory for 8k vs 32k tokens grows ~4x, not 16x."""
  params, config = tiny
  emb = embed.Embedder(params, config, devices=jax.local_devices()[:1])
  fn = emb.forward_fn(long=True, per_protein=False)
  temp = {}
  for n in (8192, 36864):                    # 36864: the bucket of 35,000 residues
    assert emb.batching.bucket(n - 1) == n and emb.batching.batch_size(n) == 1
    batch = {"tokens": jax.ShapeDtypeStruct((1, n), np.int32),
             "segment_ids": jax.ShapeDtypeStruct((1, n), np.int32),
             "positions": jax.ShapeDtypeStruct((1, n), np.int32),
             "residue_mask": jax.ShapeDtypeStruct((1, n), bool)}
    with emb.partitioner.activation_context():
      compiled = fn.lower(emb.params, batch).compile()
    temp[n] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[36864] < 6 * temp[8192]        # linear: 4.5x; quadratic would be ~20x
  assert temp[36864] < 256 * 2**20           # dense scores alone would be 10 GiB


def test_half_precision_path(tiny):
  params, config = tiny
  seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY" * 3]
  full = embed.Embedder(params, config).embed_sequences(seqs)
  half = embed.Embedder(params, config, dtype="bfloat16", storage_dtype="float16")
  assert half.params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"].dtype == jax.numpy.bfloat16
  assert half.params["encoder"]["encoder_norm"]["scale"].dtype == np.float32
  for a, b in zip(full, half.embed_sequences(seqs)):
    assert b.dtype == np.float16
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b.astype(np.float32), axis=-1)
    assert cos.min() > 0.99


def test_model_directories_are_auto_detected(tiny, model_dir, tmp_path):
  """A params checkpoint and a HF export of it load as the same encoder."""
  params, config = tiny
  hf_dir = export.export_hf(params, config, tmp_path / "hf")
  flat = lambda p: jax.tree_util.tree_flatten_with_path(p)[0]
  for directory, name in ((model_dir, "tiny"), (hf_dir, "hf")):
    emb = embed.Embedder.from_directory(directory)
    assert emb.model_name == name and emb.dim == config.d_model
    assert emb.config.num_encoder_layers == config.num_encoder_layers
    got = flat(emb.params)
    assert [k for k, _ in got] == [k for k, _ in flat(params)]
    for (_, a), (_, b) in zip(got, flat(params)):
      np.testing.assert_array_equal(np.asarray(a), b)
  with pytest.raises(InputError, match="does not exist"):
    export.load_model(tmp_path / "nowhere")


def test_a_training_run_directory_loads_its_latest_encoder(tiny, embedder, tmp_path):
  """`--model <protjax-train model_dir>`: the latest checkpoint, decoder dropped."""
  import dataclasses
  import json
  from protjax import checkpoints
  params, config = tiny
  run = tmp_path / "run"
  run.mkdir()
  (run / "model_config.json").write_text(json.dumps(dataclasses.asdict(config)))
  ckpt = checkpoints.Checkpointer(run, checkpoints.CheckpointConfig(async_save=False))
  decoder = {"decoder": {"layers_0": {"kernel": np.ones((2, 2), np.float32)}}}
  scrambled = {**params, "token_embedder": {
      "embedding": params["token_embedder"]["embedding"][::-1].copy()}}
  ckpt.save(5, {**scrambled, **decoder}, {"count": np.zeros((), np.int32)}, {}, force=True)
  ckpt.save(9, {**params, **decoder}, {"count": np.ones((), np.int32)}, {}, force=True)
  ckpt.close()
  emb = embed.Embedder.from_directory(run, token_budget=TOKEN_BUDGET)
  assert emb.model_name == "run" and set(emb.params) == {"token_embedder", "encoder"}
  seqs = ["MKTAYIAKQR", "GSHMLEDPV"]
  for a, b in zip(emb.embed_sequences(seqs), embedder.embed_sequences(seqs)):
    np.testing.assert_array_equal(a, b)


class Boom(RuntimeError):
  pass


def test_interrupted_run_resumes_to_identical_file(embedder, fasta, tmp_path):
  ref = tmp_path / "ref.h5"
  embed.embed_fasta(embedder, fasta, per_residue=ref, per_protein=tmp_path / "ref_p.h5")
  out = tmp_path / "out.h5"
  written = []

  def fail_after_5(rid):
    written.append(rid)
    if len(written) == 5:
      raise Boom()

  with pytest.raises(Boom):
    embed.embed_fasta(embedder, fasta, per_residue=out, per_protein=tmp_path / "p.h5",
                      on_written=fail_after_5)
  assert not out.exists()                       # never a final file from a failed run
  with h5py.File(str(out) + ".partial", "r") as f:
    assert len(f) == 5
  summary = embed.embed_fasta(embedder, fasta, per_residue=out, per_protein=tmp_path / "p.h5")
  assert summary["skipped"] == 5 and summary["embedded"] == 5
  assert not os.path.exists(str(out) + ".partial")
  (attrs_r, r), (attrs_o, o) = read_all(ref), read_all(out)
  assert attrs_r == attrs_o and set(r) == set(o)
  for k in r:
    np.testing.assert_array_equal(r[k], o[k])
  # A rerun on a complete file has nothing left to do and leaves it as it is.
  again = embed.embed_fasta(embedder, fasta, per_residue=out, per_protein=tmp_path / "p.h5")
  assert again["embedded"] == 0 and again["skipped"] == 10
  assert set(read_all(out)[1]) == set(r)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from protjax import embed
    n = [0]
    def on_written(rid):
      n[0] += 1
      if n[0] == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
    embed.embed_fasta(sys.argv[1], sys.argv[2], per_residue=sys.argv[3] + ".res.h5",
                      per_protein=sys.argv[3] + ".prot.h5", token_budget=512,
                      on_written=on_written)
""")


def test_sigkilled_run_resumes_to_identical_files(embedder, model_dir, fasta, tmp_path):
  ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
  embed.embed_fasta(embedder, fasta, per_residue=ref + ".res.h5", per_protein=ref + ".prot.h5")
  root = os.path.dirname(os.path.dirname(os.path.abspath(embed.__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, model_dir, fasta, out, "6"],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  for suffix in (".res.h5", ".prot.h5"):
    assert not os.path.exists(out + suffix)
    with h5py.File(out + suffix + ".partial", "r") as f:
      assert len(f) >= 5                        # all flushed before the kill survive
  # Resume in this process (same model: the directory's name is "tiny").
  summary = embed.embed_fasta(embedder, fasta, per_residue=out + ".res.h5",
                              per_protein=out + ".prot.h5")
  assert summary["skipped"] >= 5 and summary["embedded"] + summary["skipped"] == 10
  for suffix in (".res.h5", ".prot.h5"):
    (attrs_r, r), (attrs_o, o) = read_all(ref + suffix), read_all(out + suffix)
    assert attrs_r == attrs_o and set(r) == set(o) and len(r) == 10
    for k in r:
      np.testing.assert_array_equal(r[k], o[k])


# --------------------------------------------------------------------------
# CLI and bad input: one line naming the record, no output left behind.
# --------------------------------------------------------------------------
def run_cli(args, capsys):
  with pytest.raises(SystemExit) as e:
    embed.main(args)
  out, err = capsys.readouterr()
  return e.value.code, out, err


def test_cli_writes_both_files(model_dir, fasta, tmp_path, capsys):
  res, prot = tmp_path / "r.h5", tmp_path / "p.h5"
  code, out, _ = run_cli(["--model", model_dir, "--fasta", fasta, "--per_residue", str(res),
                          "--per_protein", str(prot), "--token_budget", "512",
                          "--no_progress"], capsys)
  assert code == 0 and "embedded 10 proteins" in out
  assert len(read_all(res)[1]) == len(read_all(prot)[1]) == 10


@pytest.mark.parametrize("body,record,problem", [
    (">ok\nMKT\n>empty one\n>next\nAAA\n", "empty", "no sequence"),
    (">ok\nMKT\n>long\n" + "A" * 30 + "\n", "long", "more than max_length=20"),
    (">ok\nMKT\n>bad\nMK1T\n", "bad", "'1' is not a residue"),
])
def test_cli_bad_records(model_dir, tmp_path, capsys, body, record, problem):
  fa = tmp_path / "in.fasta"
  fa.write_text(body)
  out = tmp_path / "o.h5"
  code, _, err = run_cli(["--model", model_dir, "--fasta", str(fa), "--per_protein", str(out),
                          "--max_length", "20", "--no_progress"], capsys)
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert f"record {record!r}" in err and problem in err and str(fa) in err
  assert list(tmp_path.iterdir()) == [fa]        # no output, not even a .partial


def test_cli_refuses_output_of_another_model(model_dir, fasta, tmp_path, capsys):
  res, prot = tmp_path / "r.h5", tmp_path / "p.h5"
  with embeddings_io.EmbeddingWriter(prot, model="other", dim=7, kind="per_protein") as w:
    w.write("x", np.zeros(7, np.float32))
  before = prot.read_bytes()
  code, _, err = run_cli(["--model", model_dir, "--fasta", fasta, "--per_residue", str(res),
                          "--per_protein", str(prot), "--no_progress"], capsys)
  assert code == 2 and err.count("\n") == 1
  assert str(prot) in err and "dimension 7" in err
  assert prot.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]


def test_cli_needs_an_output(model_dir, fasta, capsys):
  code, _, err = run_cli(["--model", model_dir, "--fasta", fasta], capsys)
  assert code == 2 and "--per_residue" in err


def test_model_parallel_matches_data_parallel(tiny):
  """Weights split over a `model` axis of 2 (4 data replicas): same numbers."""
  params, config = tiny
  seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY" * 2, "W"]
  mp = embed.Embedder(params, config, model_parallel=2)
  assert (mp.partitioner.data_size, mp.partitioner.model_size) == (4, 2)
  assert mp.batching.num_shards == 4
  wi = mp.params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert wi.sharding.shard_shape(wi.shape) == (32, 32)      # d_ff 64 split in two
  for seq, got in zip(seqs, mp.embed_sequences(seqs)):
    np.testing.assert_allclose(got, encode_alone(params, config, seq), atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_titin_sized_protein_embeds(tiny, tmp_path):
  """End to end: 35,000 residues through blockwise attention on one device.

  (The fast test above checks the linear memory at compile time.)
  """
  import resource
  params, config = tiny
  emb = embed.Embedder(params, dataclasses_replace(config, attention_block_size=512),
                       devices=jax.local_devices()[:1])
  seq = random_seq(random.Random(3), 35000)
  fa = tmp_path / "titin.fasta"
  fa.write_text(f">titin\n{seq}\n")
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  embed.embed_fasta(emb, fa, per_residue=tmp_path / "r.h5", per_protein=tmp_path / "p.h5")
  grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
  _, res = read_all(tmp_path / "r.h5")
  _, prot = read_all(tmp_path / "p.h5")
  assert res["titin"].shape == (35000, 32) and np.isfinite(res["titin"]).all()
  np.testing.assert_allclose(prot["titin"], res["titin"].astype(np.float64).mean(0),
                             atol=1e-4)   # float32 sums over 35k rows
  assert grown_kib < 2 * 2**20        # < 2 GiB; dense attention scores alone: ~10 GiB


def cli(*args, timeout=120):
  """`protjax-embed ARGS` in a subprocess, as a user runs it: (exit code, stdout, stderr)."""
  proc = subprocess.run([sys.executable, "-m", "protjax.embed", *map(str, args)],
                        capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def test_cli_never_mixes_two_models_in_one_file(tiny, fasta, tmp_path):
  """Two checkpoints in folders of the same name: the second may not resume the
  first's file (issue: 'N already done' with vectors of two sets of weights)."""
  params, config = tiny
  records = list(read_fasta(fasta))
  first = tmp_path / "first.fasta"
  first.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records[:2]))
  a = export.save_params_checkpoint(tmp_path / "a" / "model", params, config)
  other = jax.tree.map(lambda x: x * 1.5, params)
  b = export.save_params_checkpoint(tmp_path / "b" / "model", other, config)
  out = tmp_path / "prot.h5"
  code, _, err = cli("--model", a, "--fasta", first, "--per_protein", out, "--no_progress")
  assert code == 0, err
  before = out.read_bytes()
  code, _, err = cli("--model", b, "--fasta", fasta, "--per_protein", out, "--no_progress")
  assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
  assert str(out) in err and "another model" in err
  assert out.read_bytes() == before and not os.path.exists(str(out) + ".partial")
  # The same weights under another folder name resume the file.
  code, stdout, err = cli("--model", a, "--fasta", fasta, "--per_protein", out, "--no_progress")
  assert code == 0 and "(2 already done)" in stdout, err
  # float16 on the CPU: the default attention has no float16 kernel there; the
  # embedder picks one that runs.
  code, stdout, err = cli("--model", a, "--fasta", first, "--per_protein", tmp_path / "h.h5",
                          "--dtype", "float16", "--no_progress")
  assert code == 0 and "embedded 2 proteins" in stdout, err
  assert not list(tmp_path.glob("*.partial"))
