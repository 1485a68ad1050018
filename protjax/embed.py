"""Embed proteins with a protjax encoder of any family: FASTA in, HDF5 out (`protjax-embed`).

The pipeline, as ESM's `extract.py` and ProtTrans' embedder do it, but with a
small fixed set of padded shapes so jit compiles a handful of programs:

1. read and validate every record up front (an error never leaves output);
2. frame each protein with its family's special tokens (ProtT5: residues +
   `</s>`; ProtBert / ProtAlbert: `[CLS]` + residues + `[SEP]`), sort by
   length (longest first) and bucket each token count onto a fixed ladder;
3. per bucket, batch `token_budget // bucket_len` proteins (a multiple of the
   local device count), padding the last batch with dummy rows (a protein's
   shape, hence its numbers, never depends on the other proteins);
4. run the encoder data-parallel over all local devices (params replicated,
   batch sharded); above `long_threshold` tokens use blockwise attention (memory
   linear in length) and one protein per device;
5. drop the special tokens' rows and padding, mean-pool the residues for
   per-protein vectors, write one dataset per protein (resumable: ids already
   in the output are skipped).

Library entry points: `Embedder` (model + batching + jitted forward),
`embed_fasta(...)` (the whole pipeline) and `main` (the CLI).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from protjax.errors import InputError, cli_main
from protjax.tokenizer import PROTT5_RESIDUES, TokenListVocabulary

# Token-length ladder for padded shapes: powers of two and the halfway points
# (x1.5), so padding wastes at most a third and on average ~15%. Lengths above
# the ladder round up to a multiple of `long_step`.
DEFAULT_LADDER = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
                  2048, 3072, 4096)
DEFAULT_LONG_THRESHOLD = 4096   # tokens; longer buckets use blockwise attention
DEFAULT_LONG_STEP = 4096        # bucket granularity above the ladder
DEFAULT_TOKEN_BUDGET = 16384    # padded tokens per batch (all devices together)
# On CPU, per device: small batches keep each layer's activations in cache.
# ProtT5-small on 2 cores embedded 3,817 residues/s at 512 tokens, 3,594 at
# 1,024, 2,986 at 4,096 and 2,071 at 8,192 (bench/RESULTS.md, 2026-11-29).
DEFAULT_CPU_TOKEN_BUDGET = 512
DEFAULT_MAX_LENGTH = 40000      # residues; titin (~35k) fits
VALID_RESIDUES = frozenset(PROTT5_RESIDUES + PROTT5_RESIDUES.lower())
DTYPES = ("float32", "bfloat16", "float16")
STORAGE_DTYPES = ("float32", "float16")


# --------------------------------------------------------------------------
# Batching: pure functions of the lengths, no JAX.
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlannedBatch:
  """One padded batch of the plan: `rows[r]` are the proteins (indices) packed,
  in order, into row r, every row `length` tokens long."""
  length: int
  rows: list[list[int]]

  @property
  def indices(self) -> list[int]:
    return [i for row in self.rows for i in row]


@dataclasses.dataclass(frozen=True)
class Batching:
  """How proteins are packed into rows and rows into fixed padded shapes.

  Attributes:
    token_budget: padded tokens per batch, over all devices together.
    ladder: increasing bucket lengths (tokens, special tokens included).
    long_threshold: buckets longer than this are "long": blockwise attention,
      one protein per row and per device.
    long_step: above the ladder, lengths round up to a multiple of this.
    num_shards: every batch size is a multiple of this (the device count).
    pack: put several proteins in one row (segment ids keep them apart), so
      a row's padding is filled with shorter proteins instead of zeros.
    max_per_row: at most this many proteins in one row.
  """
  token_budget: int = DEFAULT_TOKEN_BUDGET
  ladder: tuple[int, ...] = DEFAULT_LADDER
  long_threshold: int = DEFAULT_LONG_THRESHOLD
  long_step: int = DEFAULT_LONG_STEP
  num_shards: int = 1
  pack: bool = True
  max_per_row: int = 16

  def __post_init__(self):
    if list(self.ladder) != sorted(set(self.ladder)) or not self.ladder:
      raise ValueError(f"ladder must be strictly increasing, got {self.ladder}")
    if min(self.token_budget, self.long_step, self.num_shards, self.max_per_row) < 1:
      raise ValueError("token_budget, long_step, num_shards and max_per_row must be positive")

  def bucket(self, num_tokens: int) -> int:
    """Padded length for a protein of `num_tokens` tokens (special tokens included)."""
    for b in self.ladder:
      if num_tokens <= b:
        return b
    return -(-num_tokens // self.long_step) * self.long_step

  def is_long(self, bucket_len: int) -> bool:
    return bucket_len > self.long_threshold

  def batch_size(self, bucket_len: int) -> int:
    """Rows per batch: the budget's worth, rounded down to a multiple of the
    shard count (at least one row per shard); long buckets: one per shard."""
    if self.is_long(bucket_len):
      return self.num_shards
    rows = self.token_budget // bucket_len
    return max(self.num_shards, rows // self.num_shards * self.num_shards)

  def pack_rows(self, num_tokens: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Rows `[(length, indices)]`, best-fit decreasing on the ladder.

    Proteins are taken longest first; each goes into the open row whose free
    space fits it most tightly (at most `max_per_row` per row), else opens a
    row of its own bucket's length. Long proteins get a row each. Ties go
    by input order and row creation, so the rows are a pure function of the
    lengths.
    """
    import bisect  # pylint: disable=import-outside-toplevel
    order = sorted(range(len(num_tokens)), key=lambda i: (-num_tokens[i], i))
    rows: list[tuple[int, list[int]]] = []
    free: list[tuple[int, int]] = []   # (free tokens, row number), sorted
    for i in order:
      n = num_tokens[i]
      length = self.bucket(n)
      k = bisect.bisect_left(free, (n, -1)) if self.pack and not self.is_long(length) else None
      if k is not None and k < len(free):
        space, r = free.pop(k)
        rows[r][1].append(i)
        if space - n > 0 and len(rows[r][1]) < self.max_per_row:
          bisect.insort(free, (space - n, r))
        continue
      rows.append((length, [i]))
      if self.pack and not self.is_long(length) and length > n and self.max_per_row > 1:
        bisect.insort(free, (length - n, len(rows) - 1))
    return rows

  def plan(self, num_tokens: Sequence[int]) -> list[PlannedBatch]:
    """Packs proteins (by index) into rows, and rows into batches, longest first.

    Every batch of a length has the same shape (`pad_batch` fills a length's
    last batch with dummy rows), so a handful of programs are compiled. The
    plan depends on the lengths alone: a resumed run plans every protein
    again and recomputes the batches that hold one still to write, so it
    writes bit-identical arrays.

    Args:
      num_tokens: tokens per protein (residues + special tokens).

    Returns:
      Batches whose rows hold every index exactly once.
    """
    rows = self.pack_rows(num_tokens)
    by_length: dict[int, list[list[int]]] = {}
    for length, indices in rows:
      by_length.setdefault(length, []).append(indices)
    batches = []
    for length in sorted(by_length, reverse=True):
      size = self.batch_size(length)
      group = by_length[length]
      batches += [PlannedBatch(length, group[k:k + size]) for k in range(0, len(group), size)]
    return batches


def pad_batch(rows: Sequence[Sequence[np.ndarray]], length: int, batch_size: int,
              vocab: TokenListVocabulary) -> dict[str, np.ndarray]:
  """Stacks rows of framed proteins into one padded batch, all `[batch_size, length]`.

  Args:
    rows: per row, the framed token arrays of the proteins packed into it.

  Returns:
    tokens (int32, `vocab.pad_id` after the last protein), segment_ids
    (int32: 1, 2, ... for the proteins of a row, 0 on padding; the models
    take padding and packing from these, not from the pad id, which an
    imported vocabulary may put anywhere), positions (int32, from 0 in every
    protein, so a packed protein sees exactly the positions it would alone)
    and residue_mask (bool: the residues, without the framing tokens). Dummy
    rows (beyond `len(rows)`) hold the frame of an empty protein, so no row
    is fully masked (a fully masked softmax row could give NaN, harmless but
    noisy).
  """
  if len(rows) > batch_size:
    raise ValueError(f"{len(rows)} rows do not fit a batch of {batch_size}")
  rows = list(rows) + [[vocab.frame("")]] * (batch_size - len(rows))
  out = {"tokens": np.full((batch_size, length), vocab.pad_id, np.int32),
         "segment_ids": np.zeros((batch_size, length), np.int32),
         "positions": np.zeros((batch_size, length), np.int32),
         "residue_mask": np.zeros((batch_size, length), bool)}
  first, last = len(vocab.prefix_ids), len(vocab.suffix_ids)
  for r, proteins in enumerate(rows):
    if sum(len(t) for t in proteins) > length:
      raise ValueError(f"row of {sum(len(t) for t in proteins)} tokens does not fit "
                       f"length {length}")
    start = 0
    for segment, t in enumerate(proteins, start=1):
      end = start + len(t)
      out["tokens"][r, start:end] = t
      out["segment_ids"][r, start:end] = segment
      out["positions"][r, start:end] = np.arange(len(t))
      out["residue_mask"][r, start + first:end - last] = True
      start = end
  return out


# --------------------------------------------------------------------------
# Records: validation and tokenisation.
# --------------------------------------------------------------------------
def validate_records(records: Iterable[tuple[str, str]], *, max_length: int,
                     path: Optional[str] = None) -> list[tuple[str, str]]:
  """Reads all `(id, sequence)` records and checks each, before any output.

  Raises:
    InputError naming the file and record: empty sequence, longer than
    `max_length`, a character that is not one of the 25 ProtT5 residue letters,
    a duplicate id, or two ids that name one HDF5 dataset (`a/b` and `a_b`).
  """
  out, seen = [], set()
  for rec_id, seq in records:
    seq = seq.replace(" ", "")
    if not seq:
      raise InputError("empty sequence", path=path, record=rec_id)
    if len(seq) > max_length:
      raise InputError(f"sequence of {len(seq)} residues is longer than "
                       f"--max_length {max_length}", path=path, record=rec_id)
    bad = next((k for k, c in enumerate(seq) if c not in VALID_RESIDUES), None)
    if bad is not None:
      raise InputError(f"invalid residue {seq[bad]!r} (allowed: {PROTT5_RESIDUES}, "
                       "either case)", path=path, record=rec_id, position=bad + 1)
    if rec_id in seen:
      raise InputError("duplicate id", path=path, record=rec_id)
    seen.add(rec_id)
    out.append((rec_id, seq))
  # Two ids that would share an HDF5 dataset name: refused before any output.
  from protjax import embeddings_io  # pylint: disable=import-outside-toplevel
  embeddings_io.check_ids(seen, source=path)
  return out


# --------------------------------------------------------------------------
# The embed loop, written against a batch function (testable without a model).
# --------------------------------------------------------------------------
Batch = dict  # pad_batch's arrays: tokens, segment_ids, positions, residue_mask
RunBatch = Callable[[Batch], tuple[Optional[np.ndarray], Optional[np.ndarray]]]


def pooled_run_batch(encode_fn: Callable[..., np.ndarray], *, per_residue: bool = True,
                     per_protein: bool = True, max_per_row: int = 16) -> RunBatch:
  """Wraps `encode_fn(tokens, segment_ids, positions) -> [b, l, d]` into a `RunBatch`.

  The wrapper returns `(hidden [b, l, d] | None, means [b, max_per_row, d] | None)`,
  the mean over each packed protein's residues.
  """
  def run(batch):
    hidden = np.asarray(encode_fn(batch["tokens"], batch["segment_ids"], batch["positions"]))
    means = (segment_means(hidden, batch["segment_ids"], batch["residue_mask"], max_per_row,
                           np) if per_protein else None)
    return (hidden if per_residue else None), means
  return run


def segment_means(hidden, segment_ids, residue_mask, max_per_row: int, xnp):
  """Each packed protein's mean over its residues, in float32:
  `[b, l, d], [b, l], [b, l] -> [b, max_per_row, d]` (row k: segment k + 1)."""
  segments = xnp.arange(1, max_per_row + 1, dtype=segment_ids.dtype)
  member = ((segment_ids[..., None] == segments) & residue_mask[..., None])  # [b, l, k]
  member = member.astype(xnp.float32)
  total = xnp.einsum("bld,blk->bkd", hidden.astype(xnp.float32), member)
  count = xnp.maximum(member.sum(axis=1), 1.0)[..., None]                    # [b, k, 1]
  return total / count


def embed_loop(records: Sequence[tuple[str, str]], run_batch: RunBatch,
               batching: Batching, vocab: TokenListVocabulary, *,
               run_long: Optional[RunBatch] = None, skip: Iterable[str] = (),
               progress: Optional[Callable[[int], None]] = None,
               ) -> Iterator[tuple[str, Optional[np.ndarray], Optional[np.ndarray]]]:
  """Embeds validated records; yields `(id, per_residue [n, d], per_protein [d])`.

  Proteins are framed by `vocab` (its prefix and suffix tokens), whose rows
  are dropped again from the per-residue output, and packed several to a row
  by `batching`. Ids in `skip` (already written) are planned like the rest,
  so every batch is the one an uninterrupted run computes, but batches that
  hold only skipped proteins are not run and skipped ids are not yielded.
  Output order is the plan's (longest first), not the input order. `run_long`
  (default `run_batch`) handles buckets above the long threshold. One batch is
  kept in flight: the next is dispatched before the previous result is read
  back, so host work overlaps device work under async dispatch.
  `progress(n_residues)` is called after each batch with its new residues.
  """
  tokens = [vocab.frame(seq) for _, seq in records]
  skip = set(skip)
  first = len(vocab.prefix_ids)
  plan = batching.plan([len(t) for t in tokens])

  def finish(pending):
    planned, result = pending
    hidden, means = result
    # Device -> host copies happen here (np.asarray on a jax.Array).
    hidden = None if hidden is None else np.asarray(hidden)
    means = None if means is None else np.asarray(means)
    written = 0
    for r, row in enumerate(planned.rows):
      start = 0
      for segment, i in enumerate(row):
        rid, seq = records[i]
        if rid not in skip:
          lo = start + first
          yield (rid, None if hidden is None else hidden[r, lo:lo + len(seq)],
                 None if means is None else means[r, segment])
          written += len(seq)
        start += len(tokens[i])
    if progress is not None:
      progress(written)

  pending = None
  for planned in plan:
    if all(records[i][0] in skip for i in planned.indices):
      continue
    batch = pad_batch([[tokens[i] for i in row] for row in planned.rows], planned.length,
                      batching.batch_size(planned.length), vocab)
    fn = (run_long if (run_long is not None and batching.is_long(planned.length))
          else run_batch)
    result = fn(batch)
    if pending is not None:
      yield from finish(pending)
    pending = (planned, result)
  if pending is not None:
    yield from finish(pending)


# --------------------------------------------------------------------------
# Model loading.
# --------------------------------------------------------------------------
def model_digest(params, config, vocabulary) -> str:
  """SHA-256 over the config, the vocabulary and every parameter's path, dtype,
  shape and bytes (host float32 weights, before any cast): what the model is."""
  import hashlib
  import jax
  h = hashlib.sha256()
  h.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
  h.update(json.dumps(vocabulary.to_dict(), sort_keys=True).encode())
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    x = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)} {x.dtype} {x.shape}".encode())
    h.update(x.reshape(-1).view(np.uint8))
  return h.hexdigest()


def _choose_model_parallel(param_bytes: int, devices) -> int:
  """Smallest model-parallel size whose param shard fits in ~half a device.

  Devices that report no memory limit (CPU) get 1: the host has the memory.
  """
  from protjax import partitioning
  stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
  limit = (stats or {}).get("bytes_limit")
  if not limit:
    return 1
  for mp in partitioning.MODEL_PARALLEL_SIZES:
    if len(devices) % mp == 0 and param_bytes / mp < 0.5 * limit:
      return mp
  raise InputError(f"the model's {param_bytes / 2**30:.1f} GiB of parameters do not "
                   f"fit {len(devices)} devices of {limit / 2**30:.1f} GiB")


def _cast_on_host(params, dtype: str):
  """Float params -> `dtype` as host numpy arrays; vectors (norm scales and
  biases) kept float32, as the models compute their norms in float32.

  On the host: a model split over several devices never passes whole through
  one of them.
  """
  import jax
  import jax.numpy as jnp
  target = np.dtype(jnp.dtype(dtype))

  def cast(path, x):
    x = np.asarray(x)
    keep = x.ndim <= 1 or not jnp.issubdtype(x.dtype, jnp.floating)
    return x if keep else x.astype(target, copy=False)
  return jax.tree_util.tree_map_with_path(cast, params)


# --------------------------------------------------------------------------
# The embedder: model + batching + one jitted forward per (attention, outputs).
# --------------------------------------------------------------------------
class Embedder:
  """An encoder of any family ready to embed: params placed on all local devices.

  Args:
    params: encoder params (the family's `encoder_params` subtrees).
    config: the model's config (its class tells the family).
    vocabulary: the model's `TokenListVocabulary` (default: the family's
      released one); frames each protein with the family's special tokens.
    model_name: stored as the `model` attribute of output files.
    dtype: compute dtype ("float32", "bfloat16", "float16"); params are cast
      to it for inference (the model keeps layer norm in float32).
    storage_dtype: dtype of the written per-residue arrays.
    token_budget: see `Batching`; None: DEFAULT_TOKEN_BUDGET, or on CPU
      DEFAULT_CPU_TOKEN_BUDGET per device.
    max_length, ladder, long_threshold, long_step: see `Batching`
      and `validate_records`.
    attention_impl: attention for buckets up to `long_threshold`: "auto"
      (default: "einsum" on CPU, "xla" elsewhere), "xla"
      (`jax.nn.dot_product_attention`, cuDNN on GPU in half precision),
      "einsum", or None for the config's. Longer buckets always use
      "blockwise". On 2 CPU cores einsum embedded ProtBert-small 10% and
      ProtT5-small 2% faster than xla (bench/RESULTS.md, 2026-11-29).
    model_parallel: devices per model replica; "auto" picks the smallest size
      whose parameter shard fits the device memory (1 on CPU).
    devices: default `jax.local_devices()`.
  """

  def __init__(self, params, config, *, vocabulary: Optional[TokenListVocabulary] = None,
               model_name: str = "protjax",
               dtype: str = "float32", storage_dtype: str = "float32",
               token_budget: Optional[int] = None,
               max_length: int = DEFAULT_MAX_LENGTH,
               ladder: Sequence[int] = DEFAULT_LADDER,
               long_threshold: int = DEFAULT_LONG_THRESHOLD,
               long_step: int = DEFAULT_LONG_STEP,
               attention_impl: Optional[str] = "auto", pack: bool = True,
               model_parallel: int | str = "auto", devices=None):
    import jax
    from protjax import partitioning
    from protjax.models import registry
    if dtype not in DTYPES:
      raise InputError(f"--dtype {dtype!r} is not one of {DTYPES}")
    if storage_dtype not in STORAGE_DTYPES:
      raise InputError(f"storage dtype {storage_dtype!r} is not one of {STORAGE_DTYPES}")
    devices = list(jax.local_devices() if devices is None else devices)
    if token_budget is None:
      token_budget = (DEFAULT_CPU_TOKEN_BUDGET * len(devices)
                      if devices[0].platform == "cpu" else DEFAULT_TOKEN_BUDGET)
    if token_budget < 1 or max_length < 1:
      raise InputError("--token_budget and --max_length must be positive")
    self.model_name = model_name
    self.dtype = dtype
    self.storage_dtype = storage_dtype
    self.max_length = max_length
    self.family = registry.family_of(config)
    self.vocab = vocabulary or self.family.vocabulary()
    attention_impl = attention_impl or config.attention_impl
    if attention_impl == "auto":
      attention_impl = "einsum" if devices[0].platform == "cpu" else "xla"
    if dtype == "float16" and attention_impl == "xla" and devices[0].platform == "cpu":
      # XLA's CPU dot_general has no float16 x float16 -> float32 kernel,
      # which jax.nn.dot_product_attention asks for; the einsum path runs.
      attention_impl = "einsum"
    self.config = dataclasses.replace(config, dtype=dtype, dropout_rate=0.0,
                                      attention_impl=attention_impl)
    self.digest = model_digest(params, config, self.vocab)
    params = _cast_on_host(params, dtype)
    param_bytes = partitioning.num_bytes(params)
    if model_parallel == "auto":
      model_parallel = _choose_model_parallel(param_bytes, devices)
    self.partitioner = partitioning.make_partitioner(
        int(model_parallel), rules="tp" if int(model_parallel) > 1 else "dp",
        devices=devices)
    self.batching = Batching(token_budget=token_budget, ladder=tuple(ladder),
                             long_threshold=long_threshold, long_step=long_step,
                             num_shards=self.partitioner.data_size,
                             # ProtTXL: a protein's segments start at its row's start.
                             pack=pack and self.family.packable)
    self._param_shardings = self._shardings_for(params)
    self.dim = self._output_dim(params)
    self.params = jax.device_put(params, self._param_shardings)
    self._fns: dict = {}

  @classmethod
  def from_directory(cls, directory: str | os.PathLike, **kwargs) -> "Embedder":
    """Loads a params checkpoint, HF directory or training run (auto-detected)."""
    from protjax import export   # deferred: pulls in orbax / safetensors
    loaded = export.load_model(directory, kind=export.ENCODER)
    kwargs.setdefault("model_name", os.path.basename(os.path.abspath(directory)))
    return cls(loaded.params, loaded.config, vocabulary=loaded.vocabulary, **kwargs)

  def _module(self, long: bool):
    cfg = dataclasses.replace(self.config, attention_impl="blockwise") if long else self.config
    return self.family.encoder(cfg)

  def _shardings_for(self, params):
    import jax
    module = self._module(long=False)
    dummy = jax.ShapeDtypeStruct((1, 8), jax.numpy.int32)
    abstract = jax.eval_shape(lambda t: module.init(jax.random.PRNGKey(0), t), dummy)
    params_axes = abstract.get("params_axes")
    if params_axes is None or self.partitioner.model_size == 1:
      return jax.tree.map(lambda _: self.partitioner.replicated(), params)
    sub = {k: params_axes[k] for k in params if k in params_axes}
    return self.partitioner.param_shardings(params, sub)

  def _output_dim(self, params) -> int:
    """The width of the encoder's output, from abstract shapes (every family names it
    differently in its config)."""
    import jax
    dummy = jax.ShapeDtypeStruct((1, 8), jax.numpy.int32)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    out = jax.eval_shape(lambda p, t: self._module(long=False).apply({"params": p}, t),
                         abstract, dummy)
    return int(out.shape[-1])

  def options(self) -> dict:
    """What changes the numbers: stored as the files' `options` attribute."""
    names = self.vocab.to_dict()
    return {"family": self.family.name, "layer": self.family.layer_embedded,
            "model_digest": self.digest,
            "dtype": self.dtype, "storage_dtype": self.storage_dtype,
            "special_tokens_dropped": names["prefix"] + names["suffix"],
            "pooling": "mean over residues",
            "attention_impl": self.config.attention_impl,
            "long_threshold": self.batching.long_threshold,
            "packed": self.batching.pack}

  def forward_fn(self, *, long: bool, per_residue: bool = True,
                 per_protein: bool = True):
    """Jitted `(params, batch) -> (hidden [b, l, d] | None, means [b, k, d] | None)`.

    `batch`: `pad_batch`'s tokens, segment_ids, positions and residue_mask,
    `[b, l]` each; `means[r, j]` is the mean of the j-th protein packed in row r
    (`k = batching.max_per_row`).
    """
    key = (long, per_residue, per_protein)
    if key in self._fns:
      return self._fns[key]
    import jax
    import jax.numpy as jnp
    module = self._module(long)
    storage = jnp.dtype(self.storage_dtype)

    k = self.batching.max_per_row

    def forward(params, batch):
      hidden = module.apply({"params": params}, batch["tokens"], batch["segment_ids"],
                            batch["positions"])               # [b, l, d]
      return (hidden.astype(storage) if per_residue else None,
              segment_means(hidden, batch["segment_ids"], batch["residue_mask"], k, jnp)
              if per_protein else None)

    sharding = self.partitioner.batch_sharding()
    fn = jax.jit(forward, in_shardings=(self._param_shardings, sharding),
                 out_shardings=sharding)
    self._fns[key] = fn
    return fn

  def run_batch_fn(self, *, long: bool, per_residue: bool = True,
                   per_protein: bool = True) -> RunBatch:
    """A `RunBatch` for `embed_loop`: dispatches asynchronously."""
    import jax
    fn = self.forward_fn(long=long, per_residue=per_residue, per_protein=per_protein)
    sharding = self.partitioner.batch_sharding()

    def run(batch: Batch):
      with self.partitioner.activation_context():
        return fn(self.params, jax.device_put(batch, sharding))
    return run

  def embed(self, records: Iterable[tuple[str, str]], *, per_residue: bool = True,
            per_protein: bool = True, skip: Iterable[str] = (),
            progress: Optional[Callable[[int], None]] = None, path: Optional[str] = None):
    """Validates then embeds `(id, sequence)` records; yields
    `(id, per_residue [n, d] | None, per_protein [d] | None)`, longest first,
    for every id not in `skip` (see `embed_loop`)."""
    records = validate_records(records, max_length=self.max_length, path=path)
    return embed_loop(
        records,
        self.run_batch_fn(long=False, per_residue=per_residue, per_protein=per_protein),
        self.batching, self.vocab,
        run_long=self.run_batch_fn(long=True, per_residue=per_residue,
                                   per_protein=per_protein),
        skip=skip, progress=progress)

  def embed_sequences(self, sequences: Sequence[str]) -> list[np.ndarray]:
    """Per-residue embeddings of plain sequences, in input order."""
    records = [(str(i), s) for i, s in enumerate(sequences)]
    out = {rid: res for rid, res, _ in self.embed(records, per_protein=False)}
    return [out[str(i)] for i in range(len(sequences))]


# --------------------------------------------------------------------------
# FASTA -> HDF5.
# --------------------------------------------------------------------------
def _check_existing(writer) -> None:
  """InputError if `writer`'s partial or final file exists for another model.

  The model is identified by what it is (`model_digest` of its weights,
  config and vocabulary) and how it was run (the options that change the
  numbers), not by its folder's name: two checkpoints in folders of the same
  name must never mix in one file. Files written before digests were stored
  are matched by name.
  """
  from protjax import embeddings_io
  mine = writer.attrs.options
  for path in (writer.partial_path, writer.path):
    if not embeddings_io.present(path):
      continue
    attrs = embeddings_io.read_attrs(path)
    theirs = attrs.options
    embeddings_io.check_compatible(
        attrs, path, model=None if "model_digest" in theirs else writer.attrs.model,
        dim=writer.attrs.dim, kind=writer.attrs.kind)
    if theirs.get("model_digest", mine["model_digest"]) != mine["model_digest"]:
      raise InputError(f"embeddings were written by another model (weights digest "
                       f"{theirs['model_digest'][:12]}, model {attrs.model!r}); this one is "
                       f"{mine['model_digest'][:12]}: write to another file", path=path)
    for key in ("dtype", "storage_dtype", "attention_impl", "long_threshold"):
      if key in theirs and theirs[key] != mine[key]:
        raise InputError(f"embeddings were written with {key}={theirs[key]!r}, this run "
                         f"uses {mine[key]!r}: write to another file", path=path)


def embed_fasta(model: "str | os.PathLike | Embedder", fasta: str | os.PathLike, *,
                per_residue: Optional[str | os.PathLike] = None,
                per_protein: Optional[str | os.PathLike] = None,
                progress: bool = False,
                on_written: Optional[Callable[[str], None]] = None,
                **embedder_kwargs) -> dict:
  """Embeds every protein of `fasta` into HDF5 files (resumable, atomic).

  Args:
    model: an `Embedder`, or a model directory (params checkpoint or HF).
    fasta: input FASTA (plain or gzipped).
    per_residue, per_protein: output paths (at least one).
    progress: show a tqdm bar with residues/s.
    on_written: called with each id once all its outputs are flushed.
    **embedder_kwargs: `Embedder` options when `model` is a directory.

  Returns:
    Summary dict: `proteins`, `embedded`, `skipped`, `residues`, `seconds`.

  Raises:
    InputError (before any output is created) for bad records, or an existing
    output written by a model of another dimension / name / kind.
  """
  from protjax.data.readers import read_fasta
  from protjax.embeddings_io import EmbeddingWriter
  if per_residue is None and per_protein is None:
    raise InputError("give at least one of --per_residue / --per_protein")
  fasta = os.fspath(fasta)
  # Read and check every record before loading the model or creating output.
  max_length = (model.max_length if isinstance(model, Embedder)
                else embedder_kwargs.get("max_length", DEFAULT_MAX_LENGTH))
  records = validate_records(read_fasta(fasta, max_length=max_length),
                             max_length=max_length, path=fasta)
  embedder = model if isinstance(model, Embedder) else Embedder.from_directory(
      model, **embedder_kwargs)
  outputs = [(kind, os.fspath(p)) for kind, p in
             (("per_residue", per_residue), ("per_protein", per_protein)) if p is not None]
  writers = [EmbeddingWriter(p, model=embedder.model_name, dim=embedder.dim,
                             kind=kind, options=embedder.options(),
                             dtype=embedder.storage_dtype if kind == "per_residue"
                             else "float32")
             for kind, p in outputs]
  # Refuse an incompatible existing output before creating any file.
  for w in writers:
    _check_existing(w)
  t0 = time.perf_counter()
  for w in writers:
    w.open()
  ok = False
  summary = {"proteins": len(records), "embedded": 0, "skipped": 0, "residues": 0}
  try:
    done = [w.done_ids() for w in writers]
    todo = [r for r in records if not all(r[0] in d for d in done)]
    # Every protein is planned, the done ones skipped: the batches, hence the
    # bits, of a resumed run are those of an uninterrupted one.
    skip = {r[0] for r in records} - {r[0] for r in todo}
    summary["skipped"] = len(skip)
    total = sum(len(s) for _, s in todo)
    bar = None
    if progress:
      from tqdm import tqdm
      bar = tqdm(total=total, unit="res", unit_scale=True, smoothing=0.1,
                 desc=os.path.basename(fasta))
    try:
      for rid, res, prot in embedder.embed(
          records, per_residue=per_residue is not None,
          per_protein=per_protein is not None, skip=skip,
          progress=bar.update if bar is not None else None, path=fasta):
        for (kind, _), w, d in zip(outputs, writers, done):
          if rid not in d:
            w.write(rid, res if kind == "per_residue" else prot)
        summary["embedded"] += 1
        if on_written is not None:
          on_written(rid)
    finally:
      if bar is not None:
        bar.close()
    ok = True
  finally:
    for w in writers:
      w.close(complete=ok)
  summary["residues"] = sum(len(s) for _, s in todo)
  summary["seconds"] = time.perf_counter() - t0
  return summary


# --------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="protjax-embed",
      description="Embed the proteins of a FASTA file with a protjax T5 encoder "
      "(params checkpoint or Hugging Face T5 directory). Outputs one HDF5 dataset "
      "per protein id; rerunning on the same output resumes. Every path may be a "
      "gs:// URL: --model and --fasta are read from it; an HDF5 output on a URL is "
      "written locally (under TMPDIR) and uploaded when the run ends, to OUT when "
      "complete, else to OUT.partial, which a rerun resumes (a run killed outright "
      "uploads nothing and starts over).")
  p.add_argument("--model", required=True,
                 help="params checkpoint, HF T5 directory or protjax-train model_dir "
                 "(its latest checkpoint); auto-detected")
  p.add_argument("--fasta", required=True, help="input FASTA (plain or .gz)")
  p.add_argument("--per_residue", help="output HDF5: [length, dim] per protein")
  p.add_argument("--per_protein", help="output HDF5: [dim] mean per protein")
  p.add_argument("--token_budget", type=int,
                 help=f"padded tokens per batch over all devices (default "
                 f"{DEFAULT_TOKEN_BUDGET}; on CPU {DEFAULT_CPU_TOKEN_BUDGET} per device, "
                 f"where small batches run faster)")
  p.add_argument("--max_length", type=int, default=DEFAULT_MAX_LENGTH,
                 help="longest accepted sequence, residues (default %(default)s)")
  p.add_argument("--long_threshold", type=int, default=DEFAULT_LONG_THRESHOLD,
                 help="tokens above which blockwise attention is used, one protein "
                 "per device (default %(default)s)")
  p.add_argument("--attention_impl", choices=("auto", "xla", "einsum"), default="auto",
                 help="attention up to --long_threshold (default %(default)s: einsum on "
                 "CPU, where it is faster, xla elsewhere)")
  p.add_argument("--dtype", choices=DTYPES, default="float32",
                 help="compute precision (half precision: bfloat16 or float16)")
  p.add_argument("--storage_dtype", choices=STORAGE_DTYPES, default="float32",
                 help="dtype of stored per-residue arrays")
  p.add_argument("--model_parallel", default="auto",
                 help="devices per model replica, or 'auto' (default)")
  p.add_argument("--model_name", help="stored as the files' `model` attribute "
                 "(default: the model directory's name)")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.per_residue is None and args.per_protein is None:
    raise InputError("give at least one of --per_residue / --per_protein")
  mp = args.model_parallel
  if mp != "auto":
    try:
      mp = int(mp)
    except ValueError:
      raise InputError(f"--model_parallel {mp!r} is neither an integer nor 'auto'")
  kwargs = dict(dtype=args.dtype, storage_dtype=args.storage_dtype,
                token_budget=args.token_budget, max_length=args.max_length,
                long_threshold=args.long_threshold, model_parallel=mp,
                attention_impl=args.attention_impl)
  if args.model_name:
    kwargs["model_name"] = args.model_name
  summary = embed_fasta(args.model, args.fasta, per_residue=args.per_residue,
                        per_protein=args.per_protein, progress=not args.no_progress,
                        **kwargs)
  rate = summary["residues"] / max(summary["seconds"], 1e-9)
  print(f"embedded {summary['embedded']} proteins ({summary['skipped']} already done), "
        f"{summary['residues']} residues in {summary['seconds']:.1f} s "
        f"({rate:.0f} residues/s)")
  return 0


if __name__ == "__main__":
  main()
