"""ProtXLNet: parity with transformers' XLNet (two streams, memory), parameter
counts, the permutation-LM objective, long proteins through the memory, its
gin files and bad input.

The family-neutral behaviour (resume, sharding, export -> import -> export,
embedding through transformers) is tested with every family in
test_families.py and test_family_road.py.
"""
from __future__ import annotations

import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax import export
from protjax.errors import InputError
from protjax.hf import xlnet as hf_xlnet
from protjax.models import recurrence, registry, xlnet
from protjax.vocab import ProtBertVocabulary

from helpers import adam_fit, pad_rows, rel_error
from test_family_road import SEQUENCES, TOLERANCE, cli

# Memory shorter than a segment, so the parity covers its truncation.
PARITY = dict(num_layers=2, target_length=16, mem_len=12)


def tiny(**overrides):
  return xlnet.get_config("protxlnet_tiny", **overrides)


def tokenize(sequences, length=None):
  """`residues [SEP] [CLS]`, right-padded with [PAD]=0: `[batch, length]` int32."""
  vocab = ProtBertVocabulary()
  out = pad_rows([[*vocab.encode(s), vocab.eos_id, vocab.cls_id] for s in sequences])
  return out if length is None else np.pad(out, [(0, 0), (0, length - out.shape[1])])


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


# --------------------------------------------------------------------------- parity

@pytest.fixture(scope="module")
def reference():
  """A seeded transformers XLNetLMHeadModel (float32, eval; norms and biases
  off 1 / 0) at the tiny size, its state dict, and its outputs on SEQUENCES:
  the query stream's logits for the permutation mask and target mapping
  protjax draws (with two token types, so the segment term counts), and
  `XLNetModel`'s hidden states over two segments with memory."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = tiny(**PARITY)
  fields = hf_xlnet.hf_config(config, "lm_head")
  fields.pop("torch_dtype")
  fields.pop(hf_xlnet.PROTJAX_KEY)
  torch.manual_seed(0)
  model = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**fields))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5)
      elif name.endswith("bias"):
        p.uniform_(-0.1, 0.1)
  model.eval()
  tokens = tokenize(SEQUENCES)
  segments = np.where(tokens > 0, 1, 0)
  targets = jax.tree.map(np.asarray, xlnet.permutation_targets(
      jax.random.PRNGKey(3), jnp.asarray(tokens), jnp.asarray(segments)))
  types = (np.arange(tokens.shape[1])[None] >= 20).astype(np.int64).repeat(len(tokens), 0)
  t = lambda x, dtype=torch.float32: torch.from_numpy(np.array(x)).to(dtype)
  with torch.no_grad():
    logits = model(input_ids=t(tokens, torch.long), attention_mask=t(segments),
                   token_type_ids=t(types, torch.long), perm_mask=t(targets.perm_mask),
                   target_mapping=t(targets.target_mapping)).logits.numpy()
    # Two full segments of 16 (no padding): the second attends to the
    # first's last 12 positions per layer.
    long = tokenize([SEQUENCES[0]])[:, :32]
    first = model.transformer(input_ids=t(long[:, :16], torch.long), use_mems=True)
    second = model.transformer(input_ids=t(long[:, 16:], torch.long), mems=first.mems,
                               use_mems=True)
    hidden = [first.last_hidden_state.numpy(), second.last_hidden_state.numpy()]
    mems = np.stack([m.numpy()[:, 0] for m in first.mems])  # [layers, 12, d]
  state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  return dict(config=config, state=state, tokens=tokens, segments=segments, targets=targets,
              types=types, logits=logits, long=long, hidden=hidden, mems=mems)


def test_imported_weights_give_hf_query_stream_logits(reference):
  config, tokens = reference["config"], reference["tokens"]
  params = hf_xlnet.from_hf_state_dict(reference["state"], config, path="model.safetensors")
  assert hf_xlnet.params_kind(params) == "lm_head"
  t = reference["targets"]
  logits, out = jax.jit(lambda p: xlnet.XLNetLMHeadModel(config).apply(
      {"params": p}, tokens, reference["segments"], perm_mask=t.perm_mask,
      target_mapping=t.target_mapping, token_types=reference["types"]))(params)
  assert logits.shape == reference["logits"].shape == t.target_mapping.shape[:2] + (30,)
  keep = t.target_weights > 0
  error = rel_error(np.asarray(logits)[keep], reference["logits"][keep])
  print("query-stream logits, relative error vs transformers:", error)
  assert error < TOLERANCE
  # Padding slots: HF's query stream reads nothing there; so does protjax's.
  np.testing.assert_allclose(np.asarray(logits)[~keep], reference["logits"][~keep],
                             rtol=1e-4, atol=1e-5)


def test_two_segments_with_memory_give_hf_hidden_states(reference):
  """Segment by segment with the memory (`segment` + `update_memory`) and the
  encoder's own long path (`encode`, 32 tokens in segments of 16) both give
  `XLNetModel`'s hidden states with `use_mems`, and the memory is HF's `mems`."""
  config, long = reference["config"], reference["long"]
  params = xlnet.encoder_params(hf_xlnet.from_hf_state_dict(reference["state"], config))
  module = xlnet.XLNetEncoder(config)

  def run(p):
    ones = jnp.ones((1, 16), jnp.int32)
    memory = module.apply({"params": p}, 1, method="empty_memory")
    first = module.apply({"params": p}, long[:, :16], ones, memory, method="segment")
    memory = recurrence.update_memory(memory, first.layer_inputs, ones)
    second = module.apply({"params": p}, long[:, 16:], ones, memory, method="segment")
    return first.content, second.content, memory, module.apply({"params": p}, long)

  first, second, memory, encoded = jax.tree.map(np.asarray, jax.jit(run)(params))
  hf_first, hf_second = reference["hidden"]
  errors = {"segment 1": rel_error(first, hf_first), "segment 2": rel_error(second, hf_second),
            "encode": rel_error(encoded, np.concatenate([hf_first, hf_second], axis=1)),
            # Each layer's input over segment 1's last 12 positions.
            "memory": rel_error(memory.states[0], reference["mems"])}
  print("relative errors vs transformers:", errors)
  assert max(errors.values()) < TOLERANCE, errors
  assert (memory.segments == 1).all() and memory.states.shape == (1, 2, 12, 32)


# --------------------------------------------------------------------------- sizes

def test_table_2_parameter_count_without_allocating():
  before = {id(a) for a in jax.live_arrays()}
  c = xlnet.get_config("protxlnet_paper")
  assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, c.dropout_rate,
          c.target_length, c.mem_len) == (1024, 30, 16, 4096, 0.1, 512, 384)
  # transformers' XLNetModel at these sizes with 37 tokens (Rostlab/prot_xlnet's).
  assert xlnet.param_count(xlnet.get_config("protxlnet_paper", vocab_size=37))[1] == 409_413_632
  # protjax's vocabulary is ProtBert's 30 tokens: 7 rows of 1024 fewer; the
  # LM head adds its 30-entry bias.
  assert xlnet.param_count(c) == (409_406_494, 409_406_464)
  new = [a for a in jax.live_arrays() if id(a) not in before]
  assert sum(a.size for a in new) < 1_000_000


def test_every_gin_file_loads_and_states_its_count():
  for name in xlnet.CONFIG_NAMES:
    c = xlnet.get_config(name)
    total, encoder = xlnet.param_count(c)
    assert (c.vocab_size, c.partial_prediction) == (30, 6)
    header = (xlnet.GIN_DIR / f"{name}.gin").read_text()
    assert f"# {total:,} parameters with the LM head; encoder {encoder:,}" in header, name
  with pytest.raises(InputError, match="XLNetConfig.hidden_size 32 is not divisible by "
                                       "num_heads 3"):
    xlnet.get_config("protxlnet_tiny", num_heads=3)


def test_parameter_tree_has_logical_axes_everywhere():
  variables = jax.eval_shape(lambda r: xlnet.PermutationLMModel(tiny()).init_variables(
      r, {"encoder_input_tokens": (2, 8)}), jax.random.PRNGKey(0))
  flat = _flat(variables["params"])
  logical = _flat(flax.linen.partitioning.get_axis_names(variables["params_axes"]))
  assert set(flat) == set(logical)
  layer = {k[len("layers_0/"):]: (flat[k].shape, tuple(logical[k])) for k in flat
           if k.startswith("layers_0/rel_attn/")}
  assert layer["rel_attn/q/kernel"] == ((32, 2, 16), ("embed", "heads", "kv"))
  assert layer["rel_attn/o/kernel"] == ((2, 16, 32), ("heads", "kv", "embed"))
  assert layer["rel_attn/seg_embed"] == ((2, 2, 16), ("token_types", "heads", "kv"))
  assert layer["rel_attn/biases/r_w_bias"] == ((2, 16), ("heads", "kv"))
  assert flat["mask_emb"].shape == (32,) and flat["lm_loss/bias"].shape == (30,)
  assert sorted(xlnet.encoder_params(variables["params"])) == [
      "layers_0", "layers_1", "mask_emb", "word_embedding"]


# --------------------------------------------------------------------------- objective

@pytest.fixture(scope="module")
def draw():
  tokens = tokenize(SEQUENCES, length=64)
  segments = np.where(tokens > 0, 1, 0)
  t = xlnet.permutation_targets(jax.random.PRNGKey(7), jnp.asarray(tokens),
                                jnp.asarray(segments))
  return tokens, segments, jax.tree.map(np.asarray, t)


def test_targets_are_the_last_sixth_of_each_proteins_order(draw):
  tokens, segments, t = draw
  assert t.target_mapping.shape == (3, 11, 64)  # ceil(64 / 6) slots
  for row, seq in enumerate(SEQUENCES):
    n = len(seq)
    targets = t.target_positions[row][t.target_weights[row] > 0]
    assert len(targets) == -(-n // 6)
    assert (targets < n).all() and (np.diff(targets) > 0).all()  # residues, position order
    np.testing.assert_array_equal(t.target_ids[row][:len(targets)], tokens[row, targets])
    np.testing.assert_array_equal(t.target_mapping[row][:len(targets)].argmax(-1), targets)
    assert not t.target_mapping[row][len(targets):].any()
    order = t.order[row]
    context = np.setdiff1d(np.arange(n), targets)
    assert (order[context] == -1).all() and (order[targets] >= 0).all()
    assert (order[n:n + 2] >= 0).all() and (order[n + 2:] == -2).all()  # [SEP] [CLS], padding


def test_query_stream_never_sees_its_own_token_and_only_what_precedes_it(draw):
  """Through the model's own masks (`visibility`): at a target, the query
  stream sees exactly the protein's positions earlier in the factorisation
  order (every context residue, and the targets and [SEP]/[CLS] drawn
  before it); the content stream sees its own token too."""
  tokens, segments, t = draw
  vis = jax.tree.map(np.asarray, xlnet.visibility(jnp.asarray(segments), None,
                                                  jnp.asarray(t.perm_mask)))
  for row in range(len(tokens)):
    real = segments[row] > 0
    for slot in np.flatnonzero(t.target_weights[row]):
      i = t.target_positions[row, slot]
      seen = vis.query[row, 0, i]
      assert not seen[i]
      np.testing.assert_array_equal(seen, real & (t.order[row] < t.order[row, i]))
      assert vis.content[row, 0, i, i]
    # A context residue sees only context (never a target, [SEP] or [CLS]).
    context = np.flatnonzero(t.order[row] == -1)
    for i in context:
      np.testing.assert_array_equal(vis.query[row, 0, i], t.order[row] == -1)


def test_same_seed_and_step_give_the_same_order_and_masks():
  """The trainer's key for step s is fold_in(rng, s): the same (seed, step)
  draws the same order and masks, another step another."""
  tokens = jnp.asarray(tokenize(SEQUENCES, length=64))
  segments = jnp.where(tokens > 0, 1, 0)
  base = jax.random.PRNGKey(0)
  draw = lambda step: jax.tree.map(np.asarray, xlnet.permutation_targets(
      xlnet.step_keys(jax.random.fold_in(base, step), {})[0], tokens, segments))
  a, again, other = draw(5), draw(5), draw(6)
  for x, y in zip(a, again):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.order, other.order)
  # Evaluation (no rng): a pure function of the batch.
  batch = {"encoder_input_tokens": tokens}
  key = xlnet.step_keys(None, batch)[0]
  np.testing.assert_array_equal(key, xlnet.step_keys(None, dict(batch))[0])


def test_loss_is_the_cross_entropy_at_the_targets_and_packing_is_per_protein():
  """A packed row (two proteins) gives each protein its own 1/6 and the
  same masks as the proteins alone would (nothing crosses proteins)."""
  vocab = ProtBertVocabulary()
  a = list(vocab.encode(SEQUENCES[1])) + [vocab.eos_id, vocab.cls_id]
  b = list(vocab.encode(SEQUENCES[2])) + [vocab.eos_id, vocab.cls_id]
  tokens = np.zeros((1, 64), np.int32)
  tokens[0, :len(a) + len(b)] = a + b
  segments = np.zeros((1, 64), np.int32)
  segments[0, :len(a)], segments[0, len(a):len(a) + len(b)] = 1, 2
  t = jax.tree.map(np.asarray, xlnet.permutation_targets(
      jax.random.PRNGKey(1), jnp.asarray(tokens), jnp.asarray(segments)))
  targets = t.target_positions[0][t.target_weights[0] > 0]
  assert (targets < len(a)).sum() == -(-len(SEQUENCES[1]) // 6)
  assert (targets >= len(a)).sum() == -(-len(SEQUENCES[2]) // 6)
  model = xlnet.PermutationLMModel(tiny())
  params = model.init_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 64)})[
      "params"]
  batch = {"encoder_input_tokens": tokens, "encoder_segment_ids": segments}
  (loss, metrics), (logits, drawn) = jax.jit(lambda p, r: (
      model.loss_fn(p, batch, r), model.forward(p, batch, r)))(params, jax.random.PRNGKey(2))
  logits, weights = np.asarray(logits, np.float64), np.asarray(drawn.target_weights)
  ce = jax.nn.logsumexp(logits, -1) - np.take_along_axis(
      logits, np.asarray(drawn.target_ids)[..., None], -1)[..., 0]
  assert metrics["num_tokens"] == weights.sum() == len(targets)
  np.testing.assert_allclose(loss, (ce * weights).sum() / weights.sum(), rtol=1e-5)
  assert 0.9 * np.log(30) < loss < 1.1 * np.log(30)  # a fresh model guesses uniformly


def test_the_query_stream_learns_from_the_context_it_can_see():
  """Rows are random residues x then x again: a target's twin is context
  five times in six, so a model that reads the context through the query
  stream learns to copy within a short run, while residue frequencies alone
  give 1 in 20. (On real proteins at the acid run's size, ProtXLNet at a
  peak rate of 2e-3 stayed at the most frequent residue's accuracy; at 3e-4
  it learned context: bench/RESULTS.md.)"""
  from protjax.data.objectives import STANDARD_RESIDUES
  model = xlnet.PermutationLMModel(registry.get_family("protxlnet").get_config("tiny"))
  params = model.init_variables(jax.random.PRNGKey(0),
                                {"encoder_input_tokens": (1, 16)})["params"]
  rng = np.random.default_rng(0)

  def batch():
    halves = ["".join(rng.choice(list(STANDARD_RESIDUES), 15)) for _ in range(8)]
    return {"encoder_input_tokens": jnp.asarray(tokenize([h + h for h in halves]))}

  params = adam_fit(lambda p, b, step: model.loss_fn(p, b, jax.random.PRNGKey(step)),
                    params, batch, 120)
  accuracy = np.mean([float(model.loss_fn(params, batch(), None)[1]["accuracy"])
                      for _ in range(4)])
  assert accuracy > 0.6, accuracy


# --------------------------------------------------------------------------- long proteins

def test_a_long_protein_is_read_through_a_memory_of_bounded_length():
  """Segments of 16 with 8 positions of memory, 2 layers: a residue's vector
  depends on its segment and on what each layer's memory saw (one memory
  hop per layer): the third segment does not change with the first 8
  residues, the second does. The row's packing-segment ids keep proteins
  apart in the memory too."""
  config = tiny(target_length=16, mem_len=8)
  module = xlnet.XLNetEncoder(config)
  tokens = tokenize([SEQUENCES[0]])[:, :48]
  params = module.init(jax.random.PRNGKey(0), tokens[:, :16])["params"]
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                        params)
  encode = jax.jit(lambda t, s: module.apply({"params": params}, t, s))  # one compilation
  one = lambda t: np.where(t > 0, 1, 0)  # one protein a row
  full = np.asarray(encode(tokens, one(tokens)))
  changed = tokens.copy()
  changed[0, :8] = tokens[0, 8:16]  # beyond the reach of segment 3 (positions 32..47)
  after = np.asarray(encode(changed, one(changed)))
  np.testing.assert_array_equal(after[0, 32:], full[0, 32:])
  assert not np.allclose(after[0, 16:24], full[0, 16:24])  # within segment 2's memory
  # Two proteins in one row, the second from the second segment on: it never
  # sees the first, in its segment or in the memory.
  segments = np.where(np.arange(48) < 16, 1, 2)[None]
  packed = np.asarray(encode(tokens, segments))
  alone_tokens = np.pad(tokens[:, 16:], [(0, 0), (0, 16)])
  alone = np.asarray(encode(alone_tokens, one(alone_tokens)))
  np.testing.assert_allclose(packed[0, 16:], alone[0, :32], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- export / import

def test_export_loads_in_transformers_and_a_released_style_config_reads(tmp_path, reference):
  transformers = pytest.importorskip("transformers")
  config = reference["config"]
  params = hf_xlnet.from_hf_state_dict(reference["state"], config)
  saved = {k: v for k, v in reference["state"].items() if k != "lm_loss.weight"}
  state = hf_xlnet.to_hf_state_dict(params, config, kind="lm_head")
  assert sorted(state) == sorted(saved)
  assert all(state[k].tobytes() == saved[k].tobytes() for k in state)
  out = export.export_hf(params, config, tmp_path / "lm", kind="lm_head")
  model, info = transformers.XLNetLMHeadModel.from_pretrained(out, output_loading_info=True)
  assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
  hf = json.loads((pathlib.Path(out) / "config.json").read_text())
  assert hf_xlnet.config_from_hf(hf) == config
  del hf[hf_xlnet.PROTJAX_KEY]  # the released config has no protjax keys
  assert hf_xlnet.config_from_hf(hf) == tiny(**dict(PARITY, target_length=512))


@pytest.mark.parametrize("change, message", [
    (dict(attn_type="uni"), "config key 'attn_type' is 'uni', protjax needs 'bi'"),
    (dict(d_head=8), "config key 'd_head' is 8"),
    (dict(ff_activation="relu"), "config key 'ff_activation' is 'relu'"),
    (dict(mem_len=-3), "config key 'mem_len' must be null or a non-negative integer"),
])
def test_bad_configs_name_the_key(change, message):
  hf = dict(hf_xlnet.hf_config(tiny()), **change)
  with pytest.raises(InputError, match=message.replace("(", r"\(")):
    hf_xlnet.config_from_hf(hf, path="config.json")


def test_bad_import_is_one_line_and_writes_nothing(tmp_path):
  """An untied `lm_loss.weight`, through protjax-import as a user runs it."""
  from safetensors.numpy import load_file, save_file
  config = tiny(num_layers=1)
  abstract = jax.eval_shape(lambda r: xlnet.PermutationLMModel(config).init_variables(
      r, {"encoder_input_tokens": (1, 8)})["params"], jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), abstract)
  directory = pathlib.Path(export.export_hf(params, config, tmp_path / "hf", kind="lm_head"))
  state = load_file(str(directory / "model.safetensors"))
  state["lm_loss.weight"] = np.ones((30, 32), np.float32)
  save_file(state, str(directory / "model.safetensors"))
  out = tmp_path / "out"
  code, _, err = cli("protjax.export:import_main", directory, out)
  assert code == 2, err
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
  assert "tensor 'lm_loss.weight' differs from 'word_embedding.weight'" in err
  assert not out.exists() and not list(tmp_path.glob("out.*"))


def test_paper_run_composes():
  """Table 2's run: the paper's sizes, Adam 1e-5 with weight decay 0.01, batch
  1024, the xlnet task at 512; the step counts REFERENCE.md lacks must be bound."""
  import gin  # pylint: disable=import-outside-toplevel
  from protjax import gin_setup, optim  # pylint: disable=import-outside-toplevel
  repo = pathlib.Path(__file__).resolve().parents[1]
  gin.add_config_file_search_path(str(repo))
  path = str(repo / "gin_configs" / "runs" / "protxlnet_u100.gin")
  required = ["train.train_steps = 10", "linear_warmup_decay.warmup_steps = 1",
              "linear_warmup_decay.total_steps = 20"]
  gin.clear_config()
  try:
    gin_setup.parse_gin([path], ["train.model_dir = '/tmp/x'"] + required)
    assert gin.query_parameter("get_model.family") == "protxlnet"
    assert gin.get_configurable(xlnet.XLNetConfig)() == xlnet.get_config(
        "protxlnet_paper", remat=True)
    assert gin.query_parameter("DataConfig.task_name") == "uniref100_xlnet"
    assert gin.query_parameter("DataConfig.batch_size") == 1024
    assert gin.query_parameter("DataConfig.sequence_length") == 512
    assert gin.query_parameter("adamw.weight_decay") == 0.01
    assert gin.query_parameter("linear_warmup_decay.peak_rate") == 1e-5
    assert isinstance(gin.get_configurable(optim.adamw)(), optim.Optimizer)
    gin.clear_config()
    with pytest.raises(ValueError, match="set to `%gin.REQUIRED` but not subsequently"):
      gin_setup.parse_gin([path], ["train.model_dir = '/tmp/x'"])
  finally:
    gin.clear_config()
  assert registry.get_family("protxlnet").objective == "xlnet"
