"""The prepared corpus: FASTA shards converted once into indexed ArrayRecord files.

    protjax-data prepare --input '/data/uniref50/*.fasta.gz' --output /data/uniref50_prepared

Why ArrayRecord: every record can be read by its index (the file ends in a
chunk index), so the input pipeline can jump to any step without reading the
records before it (`prepared_pipeline`), on any number of hosts. It is the
format Grain and MaxText read; `array_record` (a tensorflow-datasets
dependency) reads it without Grain, which would add nothing here: the order
is protjax's own (`prepared_pipeline.order`), not a Grain sampler's, because
Grain shards the index space by host and the order would then depend on the
number of hosts. Each record is its own chunk (`group_size:1`, zstd), so one
random read decompresses one record.

Layout of the output folder:
- `index.json`: the format version, the validation fraction, and for each
  split its shards with their record and byte counts; written last, so a
  folder without it is not (yet) a corpus;
- `{split}-{i:05d}-of-{n:05d}.array_record`: the records of input file i
  (sorted order) that fall in `split`, in file order;
- `lengths-{split}.npy`: int64 histogram of sequence lengths (the last bin
  holds every length >= its index), for packing and for the counts;
- `parts/{i:05d}.json`: input file i is done (written after its shards; a
  rerun skips the files whose part matches, so an interrupted run resumes).

A record is `b"<id>\\n<residues>"`: the id and the sequence exactly as
`readers.read_fasta` gives them (validated, upper-case, rare residues kept;
the vocabulary maps them when tokenising). The split is the streaming
pipeline's: crc32 of the id (`readers.is_validation`).
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from protjax.data.readers import is_validation, read_fasta, resolve_files
from protjax.errors import InputError
from protjax.files import write_text_atomic

FORMAT = "protjax-prepared-corpus"
VERSION = 1
SPLITS = ("train", "validation")
WRITER_OPTIONS = "group_size:1"
# Random access: no read-ahead; reads in the calling thread (the pipeline's
# prefetch threads already overlap reads; a thread pool per read() made the
# few-records-per-shard reads of a batch 4x slower on 2 shared cores).
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
MAX_HISTOGRAM_LENGTH = 1 << 16


def _array_record():
  """The ArrayRecord reader/writer module (imported late: only this file needs it)."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  return array_record_module


def shard_name(split: str, i: int, n: int) -> str:
  return f"{split}-{i:05d}-of-{n:05d}.array_record"


def encode_record(rid: str, sequence: str) -> bytes:
  return f"{rid}\n{sequence}".encode("ascii")


def decode_record(record: bytes) -> tuple[str, bytes]:
  """`b"id\\nSEQ"` -> (id, residues as bytes)."""
  rid, _, seq = record.partition(b"\n")
  return rid.decode("ascii"), seq


def record_sequence(record: bytes) -> bytes:
  """The residues of a record (what training reads; the id stays undecoded)."""
  return record[record.index(b"\n") + 1:]


# --- writing ---------------------------------------------------------------------

def _source_stamp(path: str) -> dict:
  st = os.stat(path)
  return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _part_path(output: str, i: int) -> str:
  return os.path.join(output, "parts", f"{i:05d}.json")


def _lengths_path(output: str, i: int, split: str) -> str:
  return os.path.join(output, "parts", f"{i:05d}-lengths-{split}.npy")


def _done_part(output: str, i: int, stamp: dict, fraction: float) -> Optional[dict]:
  """The part record of input file i if a previous run finished it for the same
  source file and fraction and its shards are intact; else None."""
  try:
    with open(_part_path(output, i)) as f:
      part = json.load(f)
  except (OSError, ValueError):
    return None
  if part.get("source") != stamp or part.get("validation_fraction") != fraction:
    return None
  for split in SPLITS:
    shard = part["splits"][split]
    path = os.path.join(output, shard["file"])
    if (not os.path.isfile(path) or os.path.getsize(path) != shard["bytes"]
        or not os.path.isfile(_lengths_path(output, i, split))):
      return None
  return part


def _prepare_file(path: str, output: str, i: int, n: int, fraction: float,
                  check_duplicates: bool) -> dict:
  """Converts input file i: one shard per split, then its part record.

  Returns the part record, or {"error": message} for bad input (an InputError
  does not cross a process boundary with its fields).
  """
  module = _array_record()
  names = {s: shard_name(s, i, n) for s in SPLITS}
  tmp = {s: os.path.join(output, names[s] + ".tmp") for s in SPLITS}
  writers = {s: module.ArrayRecordWriter(tmp[s], WRITER_OPTIONS) for s in SPLITS}
  counts = {s: 0 for s in SPLITS}
  residues = {s: 0 for s in SPLITS}
  hist = {s: np.zeros(MAX_HISTOGRAM_LENGTH, np.int64) for s in SPLITS}
  lengths: dict[str, list[int]] = {s: [] for s in SPLITS}

  def flush(s):  # lengths go into the histogram in blocks (a list per file could be GBs)
    np.add.at(hist[s], np.minimum(np.asarray(lengths[s], np.int64),
                                  MAX_HISTOGRAM_LENGTH - 1), 1)
    lengths[s].clear()

  try:
    for rid, seq in read_fasta(path, check_duplicates=check_duplicates):
      split = "validation" if is_validation(rid, fraction) else "train"
      writers[split].write(encode_record(rid, seq))
      counts[split] += 1
      residues[split] += len(seq)
      lengths[split].append(len(seq))
      if len(lengths[split]) == 1 << 16:
        flush(split)
  except InputError as e:
    for s in SPLITS:
      writers[s].close()
      os.remove(tmp[s])
    return {"index": i, "error": str(e)}
  splits = {}
  for s in SPLITS:
    writers[s].close()
    os.replace(tmp[s], os.path.join(output, names[s]))
    flush(s)
    np.save(_lengths_path(output, i, s), hist[s])
    splits[s] = {"file": names[s], "records": counts[s], "residues": residues[s],
                 "bytes": os.path.getsize(os.path.join(output, names[s]))}
  part = {"source": _source_stamp(path), "validation_fraction": fraction, "splits": splits}
  write_text_atomic(_part_path(output, i), json.dumps(part, indent=1))
  return dict(part, index=i)


def prepare(patterns: Sequence[str] | str, output: str, *, validation_fraction: float = 0.05,
            workers: Optional[int] = None, check_duplicates: bool = False,
            log: Callable[[str], None] = lambda _: None) -> dict:
  """Converts FASTA files (paths/globs, plain or gzipped) into a prepared corpus.

  Args:
    patterns: the FASTA inputs.
    output: the corpus folder (created; a rerun resumes an interrupted one).
    validation_fraction: share of ids (crc32) in "validation".
    workers: input files converted at once (processes); default: CPU count.
    check_duplicates: reject an id repeated within a file (keeps a file's ids
      in memory: off by default, as for the streaming UniRef/BFD tasks).
    log: progress lines.

  Returns:
    The index (as written to `index.json`) plus "seconds" and "resumed_files".

  Raises:
    InputError for bad input (the first bad record found, naming file, record
    and position), or an output folder prepared from other inputs.
  """
  if isinstance(patterns, str):
    patterns = [patterns]
  if not 0.0 <= validation_fraction < 1.0:
    raise InputError(f"validation fraction must be in [0, 1), got {validation_fraction}")
  files = resolve_files(list(patterns), "prepare --input")
  os.makedirs(os.path.join(output, "parts"), exist_ok=True)
  stamps = [_source_stamp(f) for f in files]
  index_path = os.path.join(output, "index.json")
  if os.path.exists(index_path):
    index = read_index(output)
    if ([s["source"] for s in index["sources"]] != stamps
        or index["validation_fraction"] != validation_fraction):
      raise InputError("holds a corpus prepared from other inputs or another validation "
                       "fraction; choose a new --output", path=output)
    log(f"{output}: already prepared")
    return dict(index, seconds=0.0, resumed_files=len(files))
  start = time.perf_counter()
  n = len(files)
  parts: dict[int, dict] = {}
  todo = []
  for i, (path, stamp) in enumerate(zip(files, stamps)):
    part = _done_part(output, i, stamp, validation_fraction)
    if part is None:
      todo.append(i)
    else:
      parts[i] = part
  if parts:
    log(f"resuming: {len(parts)} of {n} files already converted")
  args = [(files[i], output, i, n, validation_fraction, check_duplicates) for i in todo]
  workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
  if workers == 1:
    _collect((_prepare_file(*a) for a in args), parts, files, log)
  else:
    # spawn: the caller may run threads (TensorFlow) that a fork would copy half-way.
    # An executor, not a Pool: a worker that dies (out of memory) breaks the run
    # with an error instead of leaving it waiting forever. After a bad file the
    # files not started are cancelled; those under way finish (and count on resume).
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      futures = [pool.submit(_prepare_file, *a) for a in args]
      try:
        _collect((f.result() for f in concurrent.futures.as_completed(futures)), parts,
                 files, log)
      except BaseException:
        for f in futures:
          f.cancel()
        raise
  index = _write_index(output, files, stamps, parts, validation_fraction)
  seconds = time.perf_counter() - start
  return dict(index, seconds=seconds, resumed_files=n - len(todo))


def _collect(results, parts: dict, files: list[str], log) -> None:
  """Gathers part records as files finish; the first error reported stops the run."""
  for part in results:
    if "error" in part:
      raise InputError(part["error"])
    i = part.pop("index")
    parts[i] = part
    log(f"{files[i]}: {part['splits']['train']['records']:,} train, "
        f"{part['splits']['validation']['records']:,} validation records")


def _write_index(output: str, files: list[str], stamps: list[dict], parts: dict,
                 fraction: float) -> dict:
  """Writes the length histograms and then `index.json` (the corpus exists from here)."""
  splits = {}
  for s in SPLITS:
    hist = sum(np.load(_lengths_path(output, i, s)) for i in range(len(files)))
    np.save(os.path.join(output, f"lengths-{s}.npy"), hist)
    shards = [parts[i]["splits"][s] for i in range(len(files))]
    splits[s] = {"records": sum(x["records"] for x in shards),
                 "residues": sum(x["residues"] for x in shards), "shards": shards}
  index = {"format": FORMAT, "version": VERSION, "validation_fraction": fraction,
           "splits": splits, "sources": [{"source": st, "file": f} for st, f in
                                         zip(stamps, files)]}
  write_text_atomic(os.path.join(output, "index.json"), json.dumps(index, indent=1))
  return index


# --- reading ---------------------------------------------------------------------

def corpus_folder(given, corpus: str) -> str:
  """The one prepared-corpus folder in `given` (a path or a list of one:
  DataConfig.source_files or the task's setting); InputError naming the
  corpus and its settings otherwise."""
  if isinstance(given, str):
    given = [given]
  given = [g for g in given or () if g]
  if len(given) != 1:
    raise InputError(f"corpus {corpus!r} needs one prepared-corpus folder (made by "
                     "protjax-data prepare), got "
                     f"{list(given) or 'none'}: set DataConfig.source_files, "
                     f"protjax-data --source, or PROTJAX_{corpus.upper()}_FILES")
  return given[0]


def read_index(directory: str) -> dict:
  """The parsed `index.json` of a prepared corpus (InputError if it is not one)."""
  path = os.path.join(directory, "index.json")
  if not os.path.isdir(directory):
    raise InputError("no such prepared-corpus folder (make one with protjax-data prepare)",
                     path=directory)
  if not os.path.isfile(path):
    raise InputError("no index.json: not a prepared corpus, or its preparation did not "
                     "finish (rerun protjax-data prepare to resume)", path=directory)
  try:
    with open(path) as f:
      index = json.load(f)
  except ValueError as e:
    raise InputError(f"not valid JSON ({e})", path=path) from None
  if not isinstance(index, dict) or index.get("format") != FORMAT:
    raise InputError(f"not a protjax prepared-corpus index (no format {FORMAT!r})", path=path)
  if index.get("version") != VERSION:
    raise InputError(f"prepared-corpus version {index.get('version')}, this protjax reads "
                     f"version {VERSION}; prepare the corpus again", path=path)
  return index


class PreparedCorpus:
  """Random access to one split of a prepared corpus.

  Opening checks that every shard exists with the byte size the index
  recorded (a truncated or replaced file is an InputError naming it); a
  shard's reader opens on first use and checks its record count; a record
  that fails its checksum when read is an InputError naming file and record.
  """

  def __init__(self, directory: str, split: str):
    if split not in SPLITS:
      raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    self.directory = directory
    self.split = split
    self.index = read_index(directory)
    info = self.index["splits"][split]
    self.shards = info["shards"]
    for shard in self.shards:
      path = os.path.join(directory, shard["file"])
      if not os.path.isfile(path):
        raise InputError("prepared shard missing", path=path)
      size = os.path.getsize(path)
      if size != shard["bytes"]:
        raise InputError(f"prepared shard is {size} bytes, index.json records "
                         f"{shard['bytes']} (truncated or changed); prepare the corpus "
                         "again", path=path)
    counts = np.array([s["records"] for s in self.shards], np.int64)
    self.num_records = int(counts.sum())
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    self._readers: dict[int, object] = {}
    self._opening = threading.Lock()  # the pipeline reads from several threads

  def _reader(self, shard: int):
    reader = self._readers.get(shard)
    if reader is not None:
      return reader
    with self._opening:
      return self._open(shard)

  def _open(self, shard: int):
    reader = self._readers.get(shard)
    if reader is None:
      path = os.path.join(self.directory, self.shards[shard]["file"])
      try:
        reader = _array_record().ArrayRecordReader(path, READER_OPTIONS)
        count = reader.num_records()
      except (RuntimeError, ValueError) as e:
        raise InputError(f"not a readable ArrayRecord file ({str(e).splitlines()[0]})",
                         path=path) from None
      if count != self.shards[shard]["records"]:
        raise InputError(f"prepared shard holds {count} records, index.json records "
                         f"{self.shards[shard]['records']} (corrupt or truncated); prepare "
                         "the corpus again", path=path)
      self._readers[shard] = reader
    return reader

  def read(self, indices: np.ndarray) -> list[bytes]:
    """Records at split-wide `indices` (int `[k]`, each in [0, num_records)), in that order."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_records):
      raise IndexError(f"record index outside [0, {self.num_records}) of split {self.split!r}")
    # One record per call, as the range [i, i + 1): array_record's
    # read(indices) allocates a vector per chunk of the file on every call
    # (ParallelReadRecordsWithIndices), and with one record a chunk that is
    # O(shard size): 1.2 ms of CPU a call on a 625k-record shard, where a
    # one-record range costs 5 us (array_record 0.8.6). Range reads are const
    # in C++ and release the GIL, so the pipeline's threads read side by side.
    # (The range is int32: a shard, one input file, holds under 2**31 records.)
    shard_of = np.searchsorted(self._starts, indices, side="right") - 1
    local = indices - self._starts[shard_of]
    out = []
    for shard, i in zip(shard_of.tolist(), local.tolist()):
      try:
        out.append(self._reader(shard).read(i, i + 1)[0])
      except RuntimeError as e:
        path = os.path.join(self.directory, self.shards[shard]["file"])
        raise InputError(f"corrupt record data ({str(e).splitlines()[0]}); prepare the "
                         "corpus again", path=path, record=f"#{i}") from None
    return out

  def length_histogram(self) -> np.ndarray:
    """int64 `[MAX_HISTOGRAM_LENGTH]`: records per sequence length (last bin: longer)."""
    return np.load(os.path.join(self.directory, f"lengths-{self.split}.npy"))

  def close(self) -> None:
    for reader in self._readers.values():
      reader.close()
    self._readers.clear()


# --- protjax-data prepare ----------------------------------------------------------

def prepare_main(argv: Sequence[str]) -> int:
  """`protjax-data prepare`: arguments after the subcommand; returns the exit code."""
  import argparse  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      prog="protjax-data prepare",
      description="Convert FASTA shards once into a prepared corpus (indexed ArrayRecord) "
                  "that training reads by index: resume at any step in seconds, on any "
                  "number of hosts.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--input", nargs="+", required=True, metavar="FASTA",
                 help="FASTA files or globs (plain or .gz); quote globs")
  p.add_argument("--output", required=True, help="corpus folder (rerun to resume)")
  p.add_argument("--validation-fraction", type=float, default=0.05,
                 help="share of record ids (crc32) held out as the validation split")
  p.add_argument("--workers", type=int, default=None,
                 help="input files converted in parallel (default: CPU count)")
  p.add_argument("--check-duplicates", action="store_true",
                 help="reject an id repeated within a file (holds a file's ids in memory)")
  args = p.parse_args(argv)
  index = prepare(args.input, args.output, validation_fraction=args.validation_fraction,
                  workers=args.workers, check_duplicates=args.check_duplicates, log=print)
  total = sum(index["splits"][s]["records"] for s in SPLITS)
  rate = total / index["seconds"] if index["seconds"] else float("nan")
  print(f"{args.output}: {index['splits']['train']['records']:,} train and "
        f"{index['splits']['validation']['records']:,} validation records "
        f"({total:,} in {index['seconds']:.1f} s, {rate:,.0f} records/s)")
  return 0
