"""The FLOP and throughput accounting behind bench/train_step.py (tokens/s, MFU).

The model's training-FLOP formula (`t5.flops_per_token`, matmuls only, x3 for
forward + backward) is checked against XLA's own count of the compiled
gradient computation; the benchmark's arithmetic (median, tokens, MFU) and its
batch are checked on hand-computed numbers.
"""
from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest

from protjax.models import t5
from protjax.vocab import ProtT5Vocabulary

_BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "train_step.py")


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_train_step", _BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_flops_per_token_by_hand():
  # One encoder and one decoder layer, every size distinct so a swapped term shows.
  c = t5.T5Config(vocab_size=128, d_model=16, d_ff=40, num_heads=2, d_kv=8,
                  num_encoder_layers=1, num_decoder_layers=1)
  i, t = 12, 5
  hd = 16  # heads * kv
  attn_w = 4 * 16 * hd  # q, k, v, out
  mlp_w = 2 * 16 * 40
  enc = 2 * (attn_w + mlp_w) * i + 2 * 2 * i * i * hd  # weights + (qk, pv)
  dec = 2 * (2 * attn_w + mlp_w) * t + 2 * 2 * t * t * hd + 2 * 2 * t * i * hd
  logits = 2 * 16 * 128 * t
  assert t5.flops_per_token(c, i, t) == pytest.approx(3 * (enc + dec + logits) / t)


def test_flops_formula_matches_xla_count():
  """XLA's FLOP count of value_and_grad(loss) vs the formula.

  XLA also counts elementwise work (softmax, norms, ReLU, loss), which the
  formula leaves out by convention, so XLA must be a little higher, never lower.
  """
  config = t5.T5Config(d_model=128, d_ff=512, num_heads=4, d_kv=32,
                       num_encoder_layers=2, num_decoder_layers=2,
                       dropout_rate=0.0)
  model = t5.EncoderDecoderModel(config)
  batch_size, inputs, targets = 2, 64, 32
  params = jax.eval_shape(lambda r: model.init_variables(r, 1, inputs, targets),
                          jax.random.PRNGKey(0))["params"]
  tokens = lambda n: jax.ShapeDtypeStruct((batch_size, n), np.int32)
  batch = {"encoder_input_tokens": tokens(inputs),
           "decoder_input_tokens": tokens(targets),
           "decoder_target_tokens": tokens(targets),
           "decoder_loss_weights": tokens(targets)}
  grad = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None)[0]))
  cost = grad.lower(params, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla = cost["flops"]
  formula = t5.flops_per_token(config, inputs, targets) * targets * batch_size
  assert formula <= xla <= 1.15 * formula, (formula, xla, xla / formula)


def test_summarize_numbers(bench):
  # Median of (3, 1, 2) s = 2 s for 4 examples of 6 + 2 tokens, 1e11 FLOP each,
  # peak 1e11 FLOP/s on each of 2 devices.
  out = bench.summarize([3.0, 1.0, 2.0], 4, 6, 2, 1e11, 1e11, 2)
  assert out["step_time_s"] == 2.0
  assert out["examples_per_s"] == 2.0
  assert out["tokens_per_s"] == 16.0  # encoder + decoder tokens
  assert out["target_tokens_per_s"] == 4.0
  assert out["model_tflops_per_s"] == pytest.approx(0.2)
  assert out["mfu"] == pytest.approx(1.0)  # 2e11 / (1e11 * 2)
  assert bench.summarize([1.0], 1, 1, 1, 1e11, None, 1)["mfu"] is None


def test_default_peak_only_for_half_precision(bench):
  # fp32 steps have no table entry (TF32/FP32 peaks differ); CPUs never do.
  assert bench.default_peak_flops("float32") is None
  assert bench.default_peak_flops("bfloat16") is None  # tests run on CPU


def test_batch_is_a_prott5_denoising_batch(bench):
  vocab = ProtT5Vocabulary()
  b = bench.make_batch(3, 40, 30, seed=1)
  assert {k: v.shape for k, v in b.items()} == {
      "encoder_input_tokens": (3, 40), "decoder_input_tokens": (3, 30),
      "decoder_target_tokens": (3, 30), "decoder_loss_weights": (3, 30)}
  targets, inputs = b["decoder_target_tokens"], b["encoder_input_tokens"]
  assert (targets[:, -1] == vocab.eos_id).all() and (inputs[:, -1] == vocab.eos_id).all()
  residues = targets[:, :-1]
  assert residues.min() >= 3 and residues.max() <= 22  # the 20 standard residues
  # Decoder input = targets shifted right behind start id 0.
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 0], 0)
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], targets[:, :-1])
  # Unmasked input positions are the target residues; ~15% are masked.
  masked = inputs[:, :29] == vocab.mask_id
  np.testing.assert_array_equal(inputs[:, :29][~masked], residues[~masked])
  assert 0.05 < (inputs[:, :-1] == vocab.mask_id).mean() < 0.3
  assert (b["decoder_loss_weights"] == 1).all()
  np.testing.assert_array_equal(bench.make_batch(3, 40, 30, seed=1)["encoder_input_tokens"],
                                inputs)
