"""ProtTXL: Transformer-XL parity with Hugging Face 4.34.1, the memory, the stream objective.

The reference is a fixture (`tests/fixtures/transfo_xl/*.npz`, made by
`tests/fixtures/make_transfo_xl_fixture.py` with transformers 4.34.1, which
still has `TransfoXLModel`; transformers 5 has none): its weights go through
`protjax.hf.transfo_xl` (the import mapping) and protjax reproduces its
hidden states and memories over 3 consecutive segments.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax import embed, export, optim, partitioning, trainer
from protjax.data import stream
from protjax.errors import InputError
from protjax.hf import transfo_xl as hf_txl
from protjax.models import recurrence, registry, transfo_xl

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FASTA = str(FIXTURES / "data" / "pretrain_small.fasta")
TOLERANCE = 1e-5


def rel_error(a, b):
  """Relative error over the whole array (the fixtures' scale, not per element)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_rel_shift_is_the_references_shift_for_any_offset():
  rng = np.random.default_rng(0)
  for q, r, klen, offset in ((4, 7, 7, 3), (4, 11, 7, 4), (1, 5, 5, 0), (6, 6, 6, 5)):
    x = rng.standard_normal((2, q, r)).astype(np.float32)
    got = np.asarray(recurrence.rel_shift(jnp.asarray(x), klen, offset))
    assert got.shape == (2, q, klen)
    for i in range(q):
      for j in range(klen):
        if 0 <= j + offset - i < r:
          assert got[0, i, j] == x[0, i, j + offset - i], (q, r, offset, i, j)


@pytest.mark.parametrize("name", ["untied_r", "shared_r"])
def test_matches_transformers_4_over_three_segments_with_memory(name):
  """Hidden states and memories of 3 consecutive segments, within 1e-5 relative
  (both float32)."""
  fixture = np.load(FIXTURES / "transfo_xl" / f"{name}.npz")
  hf_config = json.loads(str(fixture["config"]))
  config = hf_txl.config_from_hf(hf_config)
  assert config.untie_r == (name == "untied_r")
  weights = {k[len("weight/"):]: fixture[k] for k in fixture.files if k.startswith("weight/")}
  params = hf_txl.from_hf_state_dict(weights, config)
  stack = transfo_xl.TransfoXL(config)
  ids, hidden, mems = fixture["input_ids"], fixture["hidden"], fixture["mems"]
  batch = ids.shape[1]
  # Hugging Face attends to mem_len zero vectors on its first segment.
  memory = recurrence.Memory.zeros(batch, config.num_layers, config.mem_len,
                                   config.hidden_size, valid=True)
  step = jax.jit(lambda p, m, t: stack.apply({"params": p}, m, t, jnp.ones_like(t)))
  for s in range(ids.shape[0]):
    memory, out = step(params["transformer"], memory, jnp.asarray(ids[s]))
    assert rel_error(out, hidden[s]) < TOLERANCE, s
    # HF's mems: [layers, mem_len, batch, d] -> protjax's [batch, layers, mem_len, d].
    assert rel_error(memory.states, np.transpose(mems[s], (2, 0, 1, 3))) < TOLERANCE, s
  assert "4.34.1" in str(fixture["versions"])


def _random_params(config, seed=0):
  tokens = jnp.ones((1, 4), jnp.int32)
  params = transfo_xl.TransfoXLLMHeadModel(config).init(jax.random.PRNGKey(seed), tokens)
  rng = np.random.default_rng(seed)
  # Every parameter random (norms and biases too), so a mixed-up one would show.
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.standard_normal(x.shape),
                                            jnp.float32), params["params"])


@pytest.mark.parametrize("untie_r", [True, False])
def test_segments_with_memory_equal_one_forward_over_the_concatenation(untie_r):
  """With memory covering everything before a segment, reading 3 segments in
  order (the LM module step by step, and the encoder's scan) gives the
  states of one forward over the 3 concatenated."""
  config = transfo_xl.get_config("prottxl_tiny", segment_length=8, mem_len=16,
                                 untie_r=untie_r)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 30, (2, 24)), jnp.int32)
  big = transfo_xl.TransfoXLLMHeadModel(dataclasses.replace(config, mem_len=0))
  whole_logits, _, whole = big.apply({"params": params}, tokens)
  lm = transfo_xl.TransfoXLLMHeadModel(config)
  memory = None
  for s in range(3):
    logits, memory, hidden = lm.apply({"params": params}, tokens[:, 8 * s:8 * s + 8], memory)
    np.testing.assert_allclose(hidden, whole[:, 8 * s:8 * s + 8], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, whole_logits[:, 8 * s:8 * s + 8], rtol=1e-5, atol=1e-5)
  encoder = transfo_xl.TransfoXLEncoder(config)
  encoded = encoder.apply({"params": transfo_xl.encoder_params(params)}, tokens[:, :21])
  np.testing.assert_allclose(encoded, whole[:, :21], rtol=1e-5, atol=1e-5)
  # A memory shorter than the context changes the far positions, not the first segment.
  short = transfo_xl.TransfoXLEncoder(dataclasses.replace(config, mem_len=4))
  cut = short.apply({"params": transfo_xl.encoder_params(params)}, tokens)
  np.testing.assert_allclose(cut[:, :8], whole[:, :8], rtol=1e-5, atol=1e-5)
  assert not np.allclose(cut[:, 16:], whole[:, 16:], atol=1e-3)


def test_packed_proteins_stay_apart_in_the_memory():
  """Segment ids keep two proteins in one row apart, across segments too."""
  config = transfo_xl.get_config("prottxl_tiny", segment_length=8, mem_len=8)
  params = transfo_xl.encoder_params(_random_params(config))
  encoder = transfo_xl.TransfoXLEncoder(config)
  rng = np.random.default_rng(2)
  a, b = rng.integers(5, 30, 11), rng.integers(5, 30, 9)
  packed = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)
  segments = jnp.asarray([[1] * 11 + [2] * 9], jnp.int32)
  out = encoder.apply({"params": params}, packed, segments)
  alone = encoder.apply({"params": params}, jnp.asarray(a[None], jnp.int32))
  np.testing.assert_allclose(out[:, :11], alone, rtol=1e-5, atol=1e-5)


def test_paper_sizes_count_as_table_2():
  """ProtTXL (30 layers, 16 heads of 64) and ProtTXL-BFD (32 layers, 14 heads of
  128): Table 2's 409M and 562M."""
  paper, _ = transfo_xl.param_count(transfo_xl.get_config("prottxl_paper"))
  bfd, _ = transfo_xl.param_count(transfo_xl.get_config("prottxl_bfd"))
  assert (paper, bfd) == (409_313_310, 562_477_086)
  assert round(paper / 1e6) == 409 and round(bfd / 1e6) == 562


def _stream(**kw):
  args = dict(split="train", sequence_length=16, batch_size=3, seed=5,
              source_files=(FASTA,), validation_fraction=0.0)
  args.update(kw)
  return stream.get_dataset("protjax_sample_txl", **args)


def test_stream_rows_continue_from_step_to_step_and_resume_exactly():
  batches = [b for _, b in zip(range(40), _stream())]
  for prev, cur in zip(batches, batches[1:]):
    np.testing.assert_array_equal(prev["decoder_target_tokens"][:, :-1],
                                  prev["decoder_input_tokens"][:, 1:])
  within = [(a, b) for a, b in zip(batches, batches[1:])
            if a["decoder_target_tokens"][0, -1] == b["decoder_input_tokens"][0, 0]]
  assert len(within) >= len(batches) - 3  # every step but the epochs' boundaries
  resumed = [b for _, b in zip(range(10), _stream(start_step=30))]
  for a, b in zip(resumed, batches[30:]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  vocab_sep = 3
  assert (np.concatenate([b["decoder_input_tokens"] for b in batches]) == vocab_sep).any()


def test_stream_bad_settings_are_input_errors():
  with pytest.raises(InputError, match="do not apply"):
    next(_stream(pack=True))
  with pytest.raises(InputError, match="gives no segment"):
    next(_stream(sequence_length=10 ** 7))


def test_micro_batches_carry_each_rows_memory():
  """2 micro-batches give the memory and loss of one batch (rows split and reassembled)."""
  model = registry.get_model("prottxl", transfo_xl.get_config("prottxl_tiny"))
  batches = [b for _, b in zip(range(2), _stream(batch_size=16))]
  shapes = {k: v.shape for k, v in batches[0].items()}
  part = partitioning.make_partitioner(1, "tp")
  results = []
  for n in (1, 2):
    setup = trainer.setup_training(model, optim.lamb(optim.constant_schedule(0.0)), part,
                                   shapes, num_microbatches=n, dropout=False)
    state = setup.init_state()
    for b in batches:
      state, metrics = setup.train_step(state, setup.to_global(b))
    results.append((state.model_state, jax.device_get(metrics)))
  (m1, r1), (m2, r2) = results
  np.testing.assert_allclose(r1["loss"], r2["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1.states, m2.states, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(m1.segments, m2.segments)
  assert np.asarray(m1.segments).all()  # two 16-token segments fill the 32 slots


def _tiny_export(tmp_path, **overrides):
  config = transfo_xl.get_config("prottxl_tiny", segment_length=8, mem_len=8, **overrides)
  params = jax.tree.map(np.asarray, _random_params(config))
  return export.export_hf(params, config, tmp_path / "hf", kind="lm"), config, params


def test_the_export_embeds_proteins_in_segments_with_memory(tmp_path):
  """protjax-embed's road (export -> load_model -> Embedder): each protein alone
  (never packed), framed `residues [SEP]`, read 8 tokens a segment with 8 of
  memory: the encoder's own states for it; per-protein = their mean."""
  out, config, params = _tiny_export(tmp_path)
  names = json.load(open(pathlib.Path(out) / "config.json"))
  assert (names["model_type"], names["architectures"]) == ("transfo-xl", ["TransfoXLLMHeadModel"])
  embedder = embed.Embedder.from_directory(out, attention_impl="einsum")
  assert embedder.family.name == "prottxl" and not embedder.batching.pack
  sequences = ["MGCMKSKQTFPFPTIYEGEKQHESEEPFMPEERCLPRMASPVNVKEEVKEPPGTNTVILE",
               "MPMKSLRNDHGTLKAMIGSDFNELTIAAKNLATHAF", "MNWTAATCWALL"]
  encoder = transfo_xl.TransfoXLEncoder(config)
  got = {rid: (res, mean) for rid, res, mean in embedder.embed(
      [(str(i), s) for i, s in enumerate(sequences)])}
  for i, seq in enumerate(sequences):
    framed = embedder.vocab.frame(seq)
    assert framed[-1] == 3 and len(framed) == len(seq) + 1  # residues [SEP]
    want = encoder.apply({"params": transfo_xl.encoder_params(params)},
                         jnp.asarray(framed[None]))[0, :len(seq)]
    res, mean = got[str(i)]
    assert rel_error(res, want) < TOLERANCE
    np.testing.assert_allclose(mean, np.mean(want, axis=0), rtol=1e-5, atol=1e-6)


def _import_error(tmp_path, src):
  proc = subprocess.run(
      [sys.executable, "-c", "import sys; from protjax.export import import_main; "
       "sys.argv[0] = 'protjax'; import_main()", str(src), str(tmp_path / "out")],
      capture_output=True, text=True, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert not (tmp_path / "out").exists()
  return lines[0]


def test_importing_a_bad_transformer_xl_is_one_line_and_writes_nothing(tmp_path):
  out, _, _ = _tiny_export(tmp_path)
  path = pathlib.Path(out) / "config.json"
  hf = json.load(open(path))
  json.dump(dict(hf, cutoffs=[10, 20], adaptive=True), open(path, "w"))
  assert "'cutoffs'" in _import_error(tmp_path, out)
  json.dump(dict(hf, d_inner=48), open(path, "w"))
  line = _import_error(tmp_path, out)
  assert "layers.0.pos_ff.CoreNet.0.weight" in line and "[48, 32]" in line
