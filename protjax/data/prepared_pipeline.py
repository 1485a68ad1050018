"""The index-based input pipeline: a prepared corpus -> masked, batched numpy features.

The corpus path for UniRef/BFD (`protjax-data prepare` makes the corpus,
`protjax.data.prepared`); `pipeline` streams FASTA instead. Same features,
dtypes and shapes as the streaming pipeline for every objective (t5, bert,
electra) and feature converter, packed or not; the random draws differ.

Order: the example at global position i of a run is record
`perm(seed, epoch)[i mod N]`, epoch = i // N, of the split's N records, with
`perm` a keyed bijection of [0, N) (a Feistel network with cycle walking, so
nothing of size N is ever built). Global step s holds positions
[s * G * k, (s + 1) * G * k): G the global batch (`batch_size` x hosts), k
records per row (1, or the packing factor). Row r of the global batch packs
positions s * G * k + r * k + [0, k); host h of n keeps rows
[h * G / n, (h + 1) * G / n). So:
- the batch at step s is a pure function of (corpus, split, seed, s, G, the
  length and the objective): a resume at any step costs an index computation
  (plus reading one batch of records), never a replay;
- a run resumed on another number of hosts sees the same global batches:
  nothing depends on the host count but which rows a host keeps;
- crops (the window start of a long protein) are drawn from (seed, position)
  and masks from (seed, step, global row, column) by a counter-based hash, so
  every example of a batch has its own draws and the same protein gets fresh
  masks in every epoch.

Packing (`pack=True`): each row takes its k records in order, each cropped to
the residues that fit in one example, and keeps every one that still fits in
the row (the others wait for the next epoch). k = floor(length / mean tokens
of a cropped example), the mean taken from the split's length histogram, so
it is fixed for a corpus and length. Segment ids count 1, 2, ... per row,
positions restart at 0 for every protein, as seqio's packer gives them.

What it gives up against the streaming pipeline: length_policy="drop" (the
order is index-based; crop instead), and the validation fraction is fixed
when the corpus is prepared.
"""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from protjax.data import prepared
from protjax.data.objectives import CONVERTERS, STANDARD_RESIDUES, Objective
from protjax.errors import InputError

PURPOSE_ORDER, PURPOSE_CROP, PURPOSE_MASK, PURPOSE_HOW, PURPOSE_PICK = 10, 11, 12, 13, 14
FEISTEL_ROUNDS = 6
# Batches computed ahead, by WORKERS threads. A batch's reads are random: on
# a corpus larger than the page cache they wait on the disk, and batches of
# other steps overlap that wait (ArrayRecord reads release the GIL; 4 threads
# reading cost the same CPU time as one). `batch(step)` is pure, so what a
# step gets does not depend on the threads.
PREFETCH = 8
WORKERS = 4

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


# --- counter-based randomness --------------------------------------------------------

def _mix_int(x: int) -> int:
  """splitmix64's finaliser on a Python int (64-bit wrap)."""
  x &= _M64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
  return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 arrays (multiplications wrap)."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def key(*parts: int) -> int:
  """A 64-bit key for (seed, purpose, step, ...): distinct tuples, unrelated keys."""
  h = 0x243F6A8885A308D3
  for p in parts:
    h = _mix_int(h ^ ((int(p) * _GOLDEN) & _M64))
  return h


def uniform(k: int, counters: np.ndarray) -> np.ndarray:
  """float64 in [0, 1), one per counter (any int shape): element c of the
  splitmix64 stream keyed by `k`, so any slice of a batch draws alone what
  the whole batch would draw there."""
  with np.errstate(over="ignore"):
    x = np.uint64(k) + counters.astype(np.uint64) * np.uint64(_GOLDEN)
    return (_mix(x) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# --- order ----------------------------------------------------------------------------

def permute(x: np.ndarray, n: int, k: int) -> np.ndarray:
  """A keyed bijection of [0, n) applied to int `x` (any shape): a balanced
  Feistel network on the smallest even number of bits covering n, walked
  until the result falls below n (fewer than 4 rounds trips on average)."""
  x = np.asarray(x, np.int64)
  if n <= 1:
    return x.copy()
  bits = max(2, int(n - 1).bit_length())
  half = (bits + 1) // 2
  low = np.uint64((1 << half) - 1)
  round_keys = [np.uint64(key(k, r)) for r in range(FEISTEL_ROUNDS)]
  out = x.astype(np.uint64)
  todo = np.ones(out.shape, bool)
  with np.errstate(over="ignore"):
    while todo.any():
      v = out[todo]
      left, right = v >> np.uint64(half), v & low
      for rk in round_keys:
        left, right = right, left ^ (_mix(right ^ rk) & low)
      out[todo] = (left << np.uint64(half)) | right
      todo = out >= np.uint64(n)
  return out.astype(np.int64)


def record_indices(positions: np.ndarray, n: int, seed: int, shuffle: bool) -> np.ndarray:
  """Records at global `positions` of the endless run: `perm(seed, epoch)[i mod n]`."""
  positions = np.asarray(positions, np.int64)
  if not shuffle:
    return positions % n
  epoch, offset = np.divmod(positions, n)
  out = np.empty_like(positions)
  for e in np.unique(epoch):  # a batch spans one epoch, or two at a boundary
    where = epoch == e
    out[where] = permute(offset[where], n, key(seed, PURPOSE_ORDER, int(e)))
  return out


# --- records -> features ------------------------------------------------------------------

def records_per_row(histogram: np.ndarray, length: int, objective: Objective) -> int:
  """Packing factor k: how many cropped examples of mean size fill a row."""
  max_res = objective.max_residues(length)
  lengths = np.minimum(np.arange(len(histogram)), max_res)
  total = int(histogram.sum())
  if total == 0:
    return 1
  mean_tokens = float((lengths * histogram).sum()) / total + objective.num_special
  return max(1, int(length // mean_tokens))


def layout(seqs: list[bytes], crop_u: np.ndarray, length: int, objective: Objective
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Crops and places `[rows, k]` records (row-major `seqs`) into rows.

  Each record becomes prefix + a window of at most `max_residues` residues
  (start drawn from `crop_u`) + suffix; a row keeps its records in order,
  skipping one that no longer fits.

  Returns:
    tokens, segment_ids (1, 2, ... per row, 0 = padding), positions: int32
    `[rows, length]`.
  """
  rows, k = crop_u.shape
  max_res = objective.max_residues(length)
  lens = np.fromiter((len(s) for s in seqs), np.int64, len(seqs)).reshape(rows, k)
  slack = np.maximum(lens - max_res, 0)
  start = np.minimum((crop_u * (slack + 1)).astype(np.int64), slack)
  kept = np.minimum(lens, max_res)
  size = kept + objective.num_special
  offset = np.zeros((rows, k), np.int64)
  fits = np.zeros((rows, k), bool)
  used = np.zeros(rows, np.int64)
  segment = np.zeros((rows, k), np.int64)
  count = np.zeros(rows, np.int64)
  for j in range(k):  # k is small: the loop runs over records of a row, rows at once
    fits[:, j] = used + size[:, j] <= length
    offset[:, j] = used
    count += fits[:, j]
    segment[:, j] = count
    used += np.where(fits[:, j], size[:, j], 0)
  tokens = np.zeros((rows, length), np.int32)
  segment_ids = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  row_of = np.repeat(np.arange(rows), k)[fits.ravel()]
  off, size_f, kept_f = offset[fits], size[fits], kept[fits]
  # Every token of a placed example: its row, column and place in the example.
  tok_row = np.repeat(row_of, size_f)
  within = np.arange(int(size_f.sum())) - np.repeat(np.cumsum(size_f) - size_f, size_f)
  tok_col = np.repeat(off, size_f) + within
  segment_ids[tok_row, tok_col] = np.repeat(segment[fits], size_f)
  positions[tok_row, tok_col] = within
  table = objective.vocabulary._byte_to_id  # pylint: disable=protected-access
  pieces = [seqs[i][s:s + m] for i, s, m in zip(np.flatnonzero(fits.ravel()).tolist(),
                                                 start[fits].tolist(), kept_f.tolist())]
  residues = table[np.frombuffer(b"".join(pieces), np.uint8)]
  n_pre = len(objective.prefix_ids)
  res_within = np.arange(int(kept_f.sum())) - np.repeat(np.cumsum(kept_f) - kept_f, kept_f)
  tokens[np.repeat(row_of, kept_f), np.repeat(off + n_pre, kept_f) + res_within] = residues
  for j, t in enumerate(objective.prefix_ids):
    tokens[row_of, off + j] = t
  for j, t in enumerate(objective.suffix_ids):
    tokens[row_of, off + n_pre + kept_f + j] = t
  return tokens, segment_ids, positions


def mask(tokens: np.ndarray, objective: Objective, seed: int, step: int,
         counters: np.ndarray) -> dict[str, np.ndarray]:
  """The objective's masking of `[rows, length]` ids, draws keyed by
  (seed, step, counter) with `counters` the global (row, column) of each id.

  Same rules as `preprocessors.t5_denoise` / `bert_mask`: residues only;
  t5 replaces every selected residue by `<extra_id_0>`; bert/electra by
  `[MASK]` (80%), a random standard residue (10%) or itself (10%).
  """
  vocab = objective.vocabulary
  ids = vocab.residue_ids
  residue = (tokens >= int(ids[0])) & (tokens <= int(ids[-1]))
  selected = (uniform(key(seed, PURPOSE_MASK, step), counters) < objective.mask_rate) & residue
  if objective.name == "t5":
    inputs = np.where(selected, np.int32(vocab.vocab_size - 1), tokens)
  else:
    how = uniform(key(seed, PURPOSE_HOW, step), counters)
    standard = np.asarray(vocab.encode(STANDARD_RESIDUES), np.int32)
    pick = (uniform(key(seed, PURPOSE_PICK, step), counters) * len(standard)).astype(np.int64)
    replaced = np.where(how < objective.replace_with_mask, np.int32(vocab.mask_id),
                        np.where(how < objective.replace_with_mask + objective.replace_with_random,
                                 standard[pick], tokens))
    inputs = np.where(selected, replaced, tokens)
  return {"inputs": inputs.astype(np.int32), "targets": tokens,
          "loss_weights": selected.astype(np.int32)}


def convert(features: dict[str, np.ndarray], kind: str,
            segment_ids: Optional[np.ndarray] = None,
            positions: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
  """`feature_converters.convert` in NumPy: the same names, order and dtypes."""
  inputs, targets = features["inputs"], features["targets"]
  if kind == "encdec":
    shifted = np.pad(targets[:, :-1], [(0, 0), (1, 0)])
    if positions is not None:  # every packed protein's decoder starts again from 0
      shifted = np.where(positions == 0, 0, shifted).astype(np.int32)
    out = {"encoder_input_tokens": inputs, "decoder_input_tokens": shifted,
           "decoder_target_tokens": targets,
           "decoder_loss_weights": (targets != 0).astype(np.int32)}
    if segment_ids is not None:
      out.update(encoder_segment_ids=segment_ids, decoder_segment_ids=segment_ids,
                 encoder_positions=positions, decoder_positions=positions)
    return out
  if kind == "encoder":
    out = {"encoder_input_tokens": inputs, "encoder_target_tokens": targets,
           "encoder_loss_weights": features["loss_weights"]}
    if segment_ids is not None:
      out.update(encoder_segment_ids=segment_ids, encoder_positions=positions)
    return out
  raise ValueError(f"unknown feature converter {kind!r}; expected one of {CONVERTERS}")


# --- batches ------------------------------------------------------------------------------

class Batcher:
  """The batch of any step, for one host: `batch(step)` is a pure function.

  Args:
    corpus: the split's `prepared.PreparedCorpus`.
    objective: masking rule and vocabulary.
    length: tokens per row.
    batch_size: rows on this host; the global batch is batch_size x num_shards.
    seed: order, crops and masks.
    shard_index, num_shards: this host's place.
    kind: "encdec" or "encoder".
    pack: several records per row.
    shuffle: permute each epoch (else record order).
  """

  def __init__(self, corpus: prepared.PreparedCorpus, objective: Objective, *, length: int,
               batch_size: int, seed: int, shard_index: int = 0, num_shards: int = 1,
               kind: str = "encdec", pack: bool = False, shuffle: bool = True):
    self.corpus, self.objective, self.length = corpus, objective, length
    self.batch_size, self.seed, self.kind, self.pack = batch_size, seed, kind, pack
    self.shuffle = shuffle
    self.global_batch = batch_size * num_shards
    self.first_row = shard_index * batch_size
    self.k = records_per_row(corpus.length_histogram(), length, objective) if pack else 1
    self.records_per_step = self.global_batch * self.k

  def positions(self, step: int) -> np.ndarray:
    """int64 `[batch_size, k]`: global positions of this host's records at `step`."""
    rows = self.first_row + np.arange(self.batch_size, dtype=np.int64)
    return step * self.records_per_step + rows[:, None] * self.k + np.arange(self.k)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    positions = self.positions(step)
    records = self.corpus.read(record_indices(positions.ravel(), self.corpus.num_records,
                                              self.seed, self.shuffle))
    seqs = [prepared.record_sequence(r) for r in records]
    crop_u = uniform(key(self.seed, PURPOSE_CROP), positions)
    tokens, segment_ids, pos = layout(seqs, crop_u, self.length, self.objective)
    rows = (self.first_row + np.arange(self.batch_size, dtype=np.uint64))[:, None]
    counters = (rows << np.uint64(32)) | np.arange(self.length, dtype=np.uint64)
    features = mask(tokens, self.objective, self.seed, step, counters)
    if self.pack:
      return convert(features, self.kind, segment_ids, pos)
    return convert(features, self.kind)


def batches(spec: Any, *, split: str, sequence_length, batch_size: int, seed: int,
            start_step: int = 0, shard_info: Optional[Any] = None,
            feature_converter: Optional[str] = None, pack: bool = False,
            repeat: bool = True, shuffle: Optional[bool] = None,
            length_policy: str = "crop", mask_rate: Optional[float] = None,
            map_rare_residues: bool = True,
            source_files: Union[Sequence[str], str, None] = None,
            validation_fraction: Optional[float] = None,
            shuffle_buffer_size: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches `{feature: int32 [batch_size, length]}` of a prepared-corpus task.

  Arguments as `protjax.data.pipeline.get_dataset`, with `spec` the task's
  `registry.TaskSpec` and `source_files` the prepared corpus folder (default:
  the task's). `batch_size` rows per host; with `shard_info` (index, num_shards)
  the global batch is batch_size x num_shards. `validation_fraction` and
  `shuffle_buffer_size` do not apply (fixed at prepare time; whole-corpus
  permutations). With repeat=False every host gets the same number of
  batches: the complete global batches of one epoch.
  """
  del validation_fraction, shuffle_buffer_size
  objective, kind, length = spec.run_settings(
      sequence_length=sequence_length, batch_size=batch_size,
      feature_converter=feature_converter, mask_rate=mask_rate,
      map_rare_residues=map_rare_residues)
  if length_policy != "crop":
    raise InputError(f"length_policy {length_policy!r}: a prepared corpus is read by index "
                     "and crops long proteins (length_policy='crop'); use the FASTA task "
                     "to drop them")
  index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
  corpus = prepared.PreparedCorpus(
      prepared.corpus_folder(source_files or spec.patterns(), spec.corpus), split)
  batcher = Batcher(corpus, objective, length=length, batch_size=batch_size, seed=seed,
                    shard_index=index, num_shards=count, kind=kind, pack=pack,
                    shuffle=(split == "train") if shuffle is None else shuffle)
  what = (f"task {spec.name!r} split {split!r} with global batch {batcher.global_batch}"
          f" ({batcher.records_per_step} records a step) from {corpus.directory}")
  if corpus.num_records == 0:
    raise InputError(f"{what}: the split holds no records")
  last = None if repeat else corpus.num_records // batcher.records_per_step
  if last == 0:
    raise InputError(f"{what} gives not a single complete batch ({corpus.num_records} "
                     "records)")
  return _prefetched(batcher, start_step, last)


def _prefetched(batcher: Batcher, start: int, stop: Optional[int]
                ) -> Iterator[dict[str, np.ndarray]]:
  """batcher.batch(start), ... (up to `stop`), PREFETCH computed ahead by
  WORKERS threads (reads and numpy release the GIL while the trainer runs
  its step), yielded in step order."""
  pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="protjax-data")
  pending: collections.deque = collections.deque()
  step = start
  try:
    while stop is None or step < stop or pending:
      while len(pending) < PREFETCH and (stop is None or step < stop):
        pending.append(pool.submit(batcher.batch, step))
        step += 1
      yield pending.popleft().result()
  finally:  # closed or dropped: cancel what has not started, let the running batch end
    for f in pending:
      f.cancel()
    pool.shutdown(wait=True)
    batcher.corpus.close()
