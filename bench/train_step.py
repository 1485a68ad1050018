"""Training-step benchmark: protjax vs Hugging Face PyTorch T5, side by side.

  python bench/train_step.py --config small --batch_size 4 \
      --input_length 512 --target_length 512 [--dtype float32|bfloat16]
      [--peak_tflops T] [--repeats 5] [--warmup 2] [--no_hf] [--compile_only]

What is timed: one full training step (forward + backward + optimiser
update), in steady state after `--warmup` steps, median of `--repeats`, each
repeat ending on a device sync (`jax.block_until_ready` / reading the loss
and `torch.cuda.synchronize`). protjax and Hugging Face repeats alternate, so
both see the same load on a shared machine.

* protjax: the trainer's own step (`protjax.trainer.setup_training`: the
  shared `make_train_step`, jitted with explicit shardings over all local
  devices, state donated), ProtT5's Adafactor (`protjax.optim.adafactor`:
  factored second moments, decay 0.8, update clipping 1.0, updates scaled by
  the parameter RMS, no momentum) at a constant learning rate.
* Hugging Face: `transformers.T5ForConditionalGeneration` built from
  `protjax.hf.t5.hf_config` (ReLU FF, tied embedding, same sizes and
  dropout), with protjax's initial parameters copied in through
  `hf_t5.to_hf_state_dict`, so both sides compute the same function from
  the same weights; the same loss (token-weighted cross-entropy + 1e-4
  z-loss, computed from the logits as protjax does); `transformers`'
  Adafactor with the same settings (scale_parameter=True, relative_step=False,
  constant lr, decay_rate -0.8, clip_threshold 1.0, beta1 None). Torch uses
  `os.cpu_count()` threads on CPU; with `--dtype bfloat16` it runs under
  autocast (float32 master weights, as protjax keeps float32 params with a
  bfloat16 compute dtype).
* Same batch on both sides: random standard residues, 15% replaced by
  ProtT5's mask id in the encoder input, targets = the unmasked sequence
  ending in `</s>`, decoder input = targets shifted right (start id 0), no
  padding.

Sanity check that the two setups match: before any update, the deterministic
(dropout off) loss of both on the batch, and the loss of each side's first
training step (equal too when `--dropout_rate 0`; with dropout the masks
differ between frameworks).

Definitions:
* tokens/s = (input_length + target_length) * batch / step time, i.e.
  encoder plus decoder tokens. (The trainer's console line counts decoder
  target positions only; `target_tokens_per_s` in the JSON is that figure.)
* model FLOPs per example = `EncoderDecoderModel.flops_per_token(in, tgt) *
  tgt` (matmul FLOPs x 3 for forward + backward, attention included, no
  rematerialisation counted); MFU = model FLOP/s / (peak per device x number
  of devices). The peak is `--peak_tflops` (per device) or, when not given,
  the trainer's table of dense bf16/fp16 peaks by device kind (H100 989
  TFLOP/s) for `--dtype bfloat16|float16`; no MFU is reported otherwise (on
  CPU there is no trustworthy peak: pass an estimate explicitly).

Prints a table and writes JSON (atomically) to
`bench/results/train_step_<config>.json` (or `--out`).
`--compile_only` AOT-compiles the protjax step for the local devices and
prints XLA's memory and FLOP analysis without running it (does it fit?).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# libgomp (torch's CPU thread pool) spins in barriers by default; on a CPU
# shared with other processes (more runnable threads than cores) that makes
# torch 10-30x slower (measured here: a `small` step at load 10 on 2 cores
# took 15 s spinning vs 0.8 s passive). Passive waiting is the fair setting
# for the HF side on a shared machine; set the variable yourself to override.
# It must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from protjax import files  # noqa: E402
from protjax.hf import t5 as hf_t5  # noqa: E402
from protjax import optim  # noqa: E402
from protjax import partitioning  # noqa: E402
from protjax import trainer  # noqa: E402
from protjax.errors import InputError, cli_main  # noqa: E402
from protjax.models import registry  # noqa: E402
from protjax.models import t5  # noqa: E402
from protjax.vocab import PROTT5_RESIDUES, ProtT5Vocabulary  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The 20 standard residues (ids 3..22 in the ProtT5 vocabulary).
STANDARD_RESIDUES = PROTT5_RESIDUES[:20]
MASK_RATE = 0.15


# ----------------------------------------------------------------------------
# Batch and accounting (pure functions).
# ----------------------------------------------------------------------------

def make_batch(batch_size: int, input_length: int, target_length: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """A ProtT5 denoising batch of random residues, all int32 `[batch, length]`.

  targets `[batch, target]`: residues, last position `</s>`; encoder input
  `[batch, input]`: the same residues (cycled when input > target), 15%
  replaced by the mask id, last position `</s>`; decoder input: targets
  shifted right with start id 0. No padding, so every position is a token.
  """
  vocab = ProtT5Vocabulary()
  rng = np.random.default_rng(seed)
  first = vocab.encode(STANDARD_RESIDUES[0])[0]
  residues = rng.integers(first, first + len(STANDARD_RESIDUES),
                          size=(batch_size, max(input_length, target_length)),
                          dtype=np.int32)
  targets = residues[:, :target_length].copy()
  targets[:, -1] = vocab.eos_id
  inputs = residues[:, :input_length].copy()
  inputs[rng.random(inputs.shape) < MASK_RATE] = vocab.mask_id
  inputs[:, -1] = vocab.eos_id
  decoder_inputs = np.concatenate(
      [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs,
          "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets)}


def tokens_per_example(input_length: int, target_length: int) -> int:
  """Encoder + decoder tokens of one example (the tokens/s definition)."""
  return input_length + target_length


def flops_per_example(config: t5.T5Config, input_length: int,
                      target_length: int) -> float:
  """Training FLOPs of one example from the model's formula."""
  return t5.flops_per_token(config, input_length, target_length) * target_length


def default_peak_flops(dtype: str) -> Optional[float]:
  """Per-device peak FLOP/s for MFU when none is given: the trainer's dense
  half-precision table, used only when the step computes in half precision
  (a float32 step on a GPU runs at the TF32/FP32 peak, which the table does
  not hold; CPUs have no entry)."""
  if dtype not in ("bfloat16", "float16"):
    return None
  return trainer.peak_flops_per_device()


def summarize(times: list[float], batch_size: int, input_length: int,
              target_length: int, flops_example: float,
              peak_flops: Optional[float], num_devices: int) -> dict[str, Any]:
  """Median step time -> throughput figures (MFU only with a peak)."""
  step = statistics.median(times)
  examples_per_s = batch_size / step
  out = {
      "step_time_s": step,
      "step_times_s": list(times),
      "examples_per_s": examples_per_s,
      "tokens_per_s": examples_per_s * tokens_per_example(input_length,
                                                          target_length),
      "target_tokens_per_s": examples_per_s * target_length,
      "model_tflops_per_s": examples_per_s * flops_example / 1e12,
      "mfu": None,
  }
  if peak_flops:
    out["mfu"] = examples_per_s * flops_example / (peak_flops * num_devices)
  return out


def paired_ratio(protjax_times: list[float], hf_times: list[float]) -> float:
  """Median over repeats of HF time / protjax time (= protjax/HF speed).

  Each pair ran back to back, so on a machine whose load drifts this is
  steadier than the ratio of the two medians (both are reported).
  """
  return statistics.median(h / p for p, h in zip(protjax_times, hf_times))


# ----------------------------------------------------------------------------
# protjax side.
# ----------------------------------------------------------------------------

class ProtjaxStep:
  """The trainer's jitted step on this process's devices."""

  def __init__(self, config: t5.T5Config, batch: dict[str, np.ndarray],
               learning_rate: float, rules: str, seed: int):
    self.config = config
    self.model = registry.EncoderDecoderAdapter(t5.EncoderDecoderModel(config))
    self.optimizer = optim.adafactor(
        learning_rate=optim.constant_schedule(learning_rate))
    self.partitioner = partitioning.make_partitioner(
        model_parallel=1, rules=rules, devices=jax.local_devices())
    self.batch_shapes = {k: v.shape for k, v in batch.items()}
    self.setup = trainer.setup_training(
        self.model, self.optimizer, self.partitioner, self.batch_shapes,
        dropout=config.dropout_rate > 0, seed=seed)
    self.num_devices = len(jax.local_devices())
    self._batch_np = batch
    self.batch = None
    self.state = None

  def init(self) -> None:
    self.state = self.setup.init_state()
    self.batch = self.setup.to_global(self._batch_np)
    jax.block_until_ready((self.state, self.batch))

  def host_params(self) -> Any:
    return jax.device_get(self.state.params)

  def eval_loss(self) -> float:
    return float(self.setup.eval_step(self.state.params, self.batch)["loss"])

  def step(self) -> tuple[float, float]:
    """One training step: (seconds, loss)."""
    start = time.perf_counter()
    self.state, metrics = self.setup.train_step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    elapsed = time.perf_counter() - start
    return elapsed, float(metrics["loss"])

  def compile_report(self) -> dict[str, Any]:
    """AOT-compiles the step for these devices: memory and XLA FLOP counts."""
    abstract_batch = {
        k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=self.setup.batch_sharding)
        for k, s in self.batch_shapes.items()}
    start = time.perf_counter()
    with self.partitioner.activation_context():
      compiled = self.setup.train_step.__wrapped__.lower(
          self.setup.abstract_state, abstract_batch).compile()
    report: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    mem = compiled.memory_analysis()
    if mem is not None:
      for name in ("argument_size_in_bytes", "output_size_in_bytes",
                   "temp_size_in_bytes", "generated_code_size_in_bytes"):
        report[name] = getattr(mem, name, None)
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    if cost:
      report["xla_flops_per_step"] = cost.get("flops")
    return report


# ----------------------------------------------------------------------------
# Hugging Face side.
# ----------------------------------------------------------------------------

class HFStep:
  """transformers' T5ForConditionalGeneration with protjax's weights."""

  def __init__(self, config: t5.T5Config, params: Any,
               batch: dict[str, np.ndarray], learning_rate: float,
               dtype: str, attn_implementation: Optional[str]):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    from transformers.optimization import Adafactor  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if self.device.type == "cpu":
      torch.set_num_threads(os.cpu_count())
    hf_dict = hf_t5.hf_config(config, hf_t5.ENCODER_DECODER)
    hf_dict["use_cache"] = False
    kwargs = {}
    if attn_implementation:
      kwargs["attn_implementation"] = attn_implementation
    hf_cfg = transformers.T5Config(**hf_dict, **kwargs)
    model = transformers.T5ForConditionalGeneration(hf_cfg)
    state = {k: torch.from_numpy(np.array(v)) for k, v in
             hf_t5.to_hf_state_dict(params, config).items()}
    result = model.load_state_dict(state, strict=False)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "lm_head.weight"}
    if result.unexpected_keys or set(result.missing_keys) - tied:
      raise RuntimeError(f"HF weights do not match: missing "
                         f"{sorted(set(result.missing_keys) - tied)}, "
                         f"unexpected {sorted(result.unexpected_keys)}")
    if model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr():
      raise RuntimeError("HF lm_head is not tied to the shared embedding")
    self.attn_implementation = model.config._attn_implementation  # pylint: disable=protected-access
    self.model = model.to(self.device)
    self.optimizer = Adafactor(
        self.model.parameters(), lr=learning_rate, eps=(1e-30, 1e-3),
        clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
        scale_parameter=True, relative_step=False, warmup_init=False)
    to = lambda x: torch.from_numpy(np.asarray(x, np.int64)).to(self.device)
    self.inputs = to(batch["encoder_input_tokens"])
    self.decoder_inputs = to(batch["decoder_input_tokens"])
    self.targets = to(batch["decoder_target_tokens"])
    self.weights = torch.from_numpy(
        np.asarray(batch["decoder_loss_weights"], np.float32)).to(self.device)
    self.autocast_dtype = {"bfloat16": torch.bfloat16,
                           "float16": torch.float16}.get(dtype)

  def _loss(self):
    """protjax's loss: token-weighted cross-entropy + z-loss, in float32."""
    torch = self.torch
    with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                        enabled=self.autocast_dtype is not None):
      logits = self.model(input_ids=self.inputs,
                          decoder_input_ids=self.decoder_inputs).logits
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, self.targets[..., None])[..., 0]
    per_token = (log_z - target_logit) + t5.Z_LOSS * log_z.square()
    return (per_token * self.weights).sum() / self.weights.sum().clamp_min(1.0)

  def _sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def eval_loss(self) -> float:
    self.model.eval()
    with self.torch.no_grad():
      loss = float(self._loss())
    self.model.train()
    return loss

  def step(self) -> tuple[float, float]:
    """One training step: (seconds, loss)."""
    self._sync()
    start = time.perf_counter()
    self.optimizer.zero_grad(set_to_none=True)
    loss = self._loss()
    loss.backward()
    self.optimizer.step()
    value = float(loss.detach())  # a device sync
    self._sync()
    return time.perf_counter() - start, value


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------

def load_average() -> Optional[tuple[float, float, float]]:
  try:
    return os.getloadavg()
  except OSError:
    return None


def machine_info() -> dict[str, Any]:
  info = {"platform": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind,
          "num_devices": len(jax.local_devices()),
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
          "xla_flags": os.environ.get("XLA_FLAGS"),
          "jax": jax.__version__}
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    info.update(torch=torch.__version__, transformers=transformers.__version__)
  except ImportError:
    pass
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True,
                           check=False).stdout
    for line in lscpu.splitlines():
      if line.startswith("Model name:"):
        info["cpu_model"] = line.split(":", 1)[1].strip()
  except OSError:
    pass
  return info


def format_table(rows: list[dict[str, Any]]) -> str:
  """Markdown table of results (one row per measured run)."""
  head = ("| config | batch | in/out len | dtype | dropout | protjax tok/s | HF tok/s | "
          "protjax/HF (paired) | protjax model TFLOP/s | protjax MFU | "
          "load avg |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    pj, hf = r["protjax"], r.get("hf")
    mfu = "n/a" if pj["mfu"] is None else f"{100 * pj['mfu']:.1f}%"
    load = r.get("load_average_start")
    load_s = "n/a" if load is None else f"{load[0]:.2f}"
    lines.append(
        f"| {r['config']} | {r['batch_size']} | {r['input_length']}/"
        f"{r['target_length']} | {r['dtype']} | "
        f"{r['config_fields']['dropout_rate']:g} ({r.get('prng_impl', '?')}) | "
        f"{pj['tokens_per_s']:.0f} | "
        f"{'n/a' if hf is None else format(hf['tokens_per_s'], '.0f')} | "
        f"{'n/a' if hf is None else format(r['ratio'], '.2f')} "
        f"({'n/a' if hf is None else format(r['ratio_paired_median'], '.2f')}) | "
        f"{pj['model_tflops_per_s']:.4g} | {mfu} | {load_s} |")
  return "\n".join(lines)


def write_json_atomic(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="small",
                 help="model size (tiny/small/base/large/xl/xxl) or gin path")
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--input_length", type=int, default=512)
  p.add_argument("--target_length", type=int, default=512)
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (params and optimiser state stay float32)")
  p.add_argument("--dropout_rate", type=float, default=None,
                 help="default: the config's (0.1); 0 makes the first-step "
                      "losses of both sides comparable")
  p.add_argument("--attention_impl", default=None,
                 help="protjax attention: einsum | xla | blockwise "
                      "(default: the config's)")
  p.add_argument("--remat", action="store_true",
                 help="rematerialise protjax layers (not counted in MFU)")
  p.add_argument("--hf_attn", default=None,
                 help="transformers attn_implementation (default: its own)")
  p.add_argument("--prng", default=None,
                 choices=("threefry2x32", "rbg", "unsafe_rbg"),
                 help="jax_default_prng_impl for the dropout masks (default: "
                      "jax's, threefry2x32, which the trainer uses; rbg is "
                      "much cheaper on CPU)")
  p.add_argument("--rules", default="tp", help="partitioning rule set")
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed steps per side (the first includes compile)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="peak dense TFLOP/s per device for MFU (default: the "
                      "trainer's table for bf16/fp16 on known accelerators)")
  p.add_argument("--no_hf", action="store_true", help="protjax only")
  p.add_argument("--compile_only", action="store_true",
                 help="AOT-compile the protjax step and report memory/FLOPs")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None,
                 help="JSON path (default bench/results/train_step_<config>.json)")
  args = p.parse_args(argv)
  for name in ("batch_size", "input_length", "target_length", "repeats"):
    if getattr(args, name) <= 0:
      raise InputError(f"--{name} must be positive, got {getattr(args, name)}")
  if args.warmup < 1:
    raise InputError("--warmup must be at least 1 (the first step compiles)")
  return args


def build_config(args) -> t5.T5Config:
  overrides = {"dtype": args.dtype}
  if args.dropout_rate is not None:
    overrides["dropout_rate"] = args.dropout_rate
  if args.attention_impl is not None:
    overrides["attention_impl"] = args.attention_impl
  if args.remat:
    overrides["remat"] = True
  return t5.get_config(args.config, **overrides)


@cli_main
def main(argv=None) -> int:
  args = parse_args(argv)
  if args.prng:
    # Before any key exists: the trainer's PRNGKey(seed) then uses this impl.
    jax.config.update("jax_default_prng_impl", args.prng)
  config = build_config(args)
  batch = make_batch(args.batch_size, args.input_length, args.target_length,
                     args.seed)
  info = machine_info()
  n_dev = info["num_devices"]
  if args.batch_size % n_dev:
    raise InputError(f"--batch_size {args.batch_size} is not divisible by "
                     f"the {n_dev} local devices")
  peak = (args.peak_tflops * 1e12 if args.peak_tflops
          else default_peak_flops(args.dtype))
  flops_ex = flops_per_example(config, args.input_length, args.target_length)
  print(f"{args.config}: {t5.param_count(config)[0] / 1e6:.1f}M params, "
        f"{flops_ex / 1e9:.1f} GFLOP/example, {info['device_kind']} x{n_dev}, "
        f"load {load_average()}", flush=True)

  pj = ProtjaxStep(config, batch, args.learning_rate, args.rules, args.seed)
  if args.compile_only:
    report = pj.compile_report()
    report["formula_flops_per_step"] = flops_ex * args.batch_size
    if report.get("xla_flops_per_step"):
      # XLA also counts elementwise ops and the optimiser: expect a few % more.
      report["xla_over_formula"] = (report["xla_flops_per_step"]
                                    / report["formula_flops_per_step"])
    print(json.dumps(report, indent=2))
    return 0

  load_start = load_average()
  pj.init()
  hf = None
  if not args.no_hf:
    hf = HFStep(config, pj.host_params(), batch, args.learning_rate,
                args.dtype, args.hf_attn)
  check: dict[str, Any] = {"eval_loss_protjax": pj.eval_loss()}
  if hf is not None:
    check["eval_loss_hf"] = hf.eval_loss()
    check["eval_loss_abs_diff"] = abs(check["eval_loss_protjax"]
                                      - check["eval_loss_hf"])
  print(f"deterministic loss before any update: {check}", flush=True)

  # Warm-up (compile on the protjax side), then alternate timed repeats.
  warm: dict[str, list[float]] = {"protjax": [], "hf": []}
  losses: dict[str, list[float]] = {"protjax": [], "hf": []}
  for i in range(args.warmup):
    seconds, loss = pj.step()
    warm["protjax"].append(seconds)
    losses["protjax"].append(loss)
    if hf is not None:
      seconds, loss = hf.step()
      warm["hf"].append(seconds)
      losses["hf"].append(loss)
  check["first_step_loss_protjax"] = losses["protjax"][0]
  if hf is not None:
    check["first_step_loss_hf"] = losses["hf"][0]
    print(f"warm-up {i}: protjax {warm['protjax'][-1]:.2f}s"
          + (f"  HF {warm['hf'][-1]:.2f}s" if hf else ""), flush=True)
  if hf is not None:
    check["first_step_loss_abs_diff"] = abs(
        check["first_step_loss_protjax"] - check["first_step_loss_hf"])
  times: dict[str, list[float]] = {"protjax": [], "hf": []}
  for i in range(args.repeats):
    # Alternate which side goes first so neither always follows the other.
    order = [("protjax", pj), ("hf", hf)]
    if i % 2:
      order.reverse()
    for name, side in order:
      if side is not None:
        seconds, loss = side.step()
        times[name].append(seconds)
        losses[name].append(loss)
    print(f"repeat {i}: protjax {times['protjax'][-1]:.2f}s"
          + (f"  HF {times['hf'][-1]:.2f}s" if hf else "")
          + f"  load {load_average()}", flush=True)

  common = (args.batch_size, args.input_length, args.target_length, flops_ex)
  result: dict[str, Any] = {
      "config": args.config, "config_fields": dataclasses.asdict(config),
      "batch_size": args.batch_size, "input_length": args.input_length,
      "target_length": args.target_length, "dtype": args.dtype,
      "learning_rate": args.learning_rate, "warmup": args.warmup,
      "prng_impl": jax.config.jax_default_prng_impl,
      "repeats": args.repeats,
      "tokens_definition": "(input_length + target_length) * batch per step",
      "flops_per_example": flops_ex,
      "peak_flops_per_device": peak,
      "protjax": summarize(times["protjax"], *common, peak, n_dev),
      "protjax_warmup_s": warm["protjax"],
      "hf": None, "ratio": None,
      "check": check, "losses": losses, "machine": info,
      "load_average_start": load_start, "load_average_end": load_average(),
      "optimizer": "Adafactor (factored, decay 0.8, clip 1.0, parameter "
                   "scaling, no momentum), constant lr, both sides",
  }
  if hf is not None:
    result["hf"] = summarize(times["hf"], *common, peak, 1)
    result["hf"]["attn_implementation"] = hf.attn_implementation
    result["hf_warmup_s"] = warm["hf"]
    result["ratio"] = (result["protjax"]["tokens_per_s"]
                       / result["hf"]["tokens_per_s"])
    result["ratio_paired_median"] = paired_ratio(times["protjax"], times["hf"])
  out = args.out or os.path.join(RESULTS_DIR, f"train_step_{args.config}.json")
  write_json_atomic(out, result)
  print(format_table([result]))
  print(f"sanity: {check}")
  for name, trace in losses.items():
    if trace:
      print(f"{name} loss per step: " + " ".join(f"{x:.5f}" for x in trace))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  main()
