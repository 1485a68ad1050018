"""Streaming readers for the protein file formats protjax consumes.

Every reader is a plain generator: it holds one record in memory at a time
(plus, for duplicate-id checks, the set of ids seen so far), opens `.gz`
files transparently (detected by magic bytes, so a gzipped file without the
suffix works too), and raises `protjax.errors.InputError` naming the file,
the record and the 1-based residue position for bad input. A truncated or
corrupt gzip file, or a file named `.gz` that is not gzip data, is an
InputError naming the file too, wherever the damage lies.

Text is UTF-8. A byte that is not UTF-8 is an error in a record id (ids name
HDF5 datasets and must round-trip exactly) and in sequence data (it is not a
residue); in the rest of a FASTA header (the description) it reads as U+FFFD.

Documented normalisations (everything else that is not a residue is an error):
- lower-case residues are upper-cased;
- spaces and tabs inside sequence lines are ignored (sequences written as
  `M K T A ...`, the ProtTrans tokenizer's input, read as `MKTA...`);
- one trailing `*` (stop codon) is stripped; an internal `*` is an error;
- the residue alphabet is the 25 letters of the ProtTrans vocabularies
  (`ACDEFGHIKLMNPQRSTVWY` + `X B O U Z`); anything else (digits, `J`, `-`,
  `.`, ...) is an error naming its position.

Over-long sequences are an error only when `max_length` is given; otherwise
the crop/drop preprocessor of the pipeline handles them.

Formats:
- FASTA, any header (`>sp|ACC|NAME ...`, `>ACC EC~~~name~~~`, ...): the
  record id is the first whitespace-delimited token of the header.
- NetSurfP-2.0 / ProtTrans CSV: header `seq|input, dssp3, dssp8, disorder,
  cb513_mask` (names may carry stray spaces), every field space-separated per
  residue.
- DeepLoc FASTA: `>ACC Location-M|S|U` (membrane-bound, soluble, unknown), or
  a bare `>ACC` whose labels live in a `Label,Class` CSV.
"""
from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import re
import zlib
from typing import Iterator, Optional, TextIO

from protjax import files as files_lib
from protjax.errors import InputError

# The 25 residue letters both ProtTrans vocabularies know.
RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBOUZ"
_NOT_RESIDUE = re.compile(f"[^{RESIDUES}]")
_WHITESPACE = re.compile(r"\s+")

DSSP3 = "HEC"
DSSP8 = "GHIBESTC"
MEMBRANE_LABELS = ("M", "S", "U")
# DeepLoc 1.0's ten locations (the validation file also has the combined
# `Cytoplasm-Nucleus`, which the reader passes through unchanged).
DEEPLOC_LOCATIONS = ("Nucleus", "Cytoplasm", "Extracellular", "Mitochondrion",
                     "Cell.membrane", "Endoplasmic.reticulum", "Plastid",
                     "Golgi.apparatus", "Lysosome/Vacuole", "Peroxisome")


def _gzip_problem(error: Exception) -> str:
  """What a gzip read error means, for a one-line message."""
  if isinstance(error, EOFError):
    return "gzip data is truncated (the file ends before the gzip stream does)"
  if isinstance(error, gzip.BadGzipFile):
    return f"gzip data is corrupt ({error})"
  if isinstance(error, zlib.error):
    return f"gzip data is corrupt (zlib: {str(error).split(': ', 1)[-1]})"
  return f"cannot read ({error.__class__.__name__}: {error})"


class _GzipReader(gzip.GzipFile):
  """A GzipFile whose read errors are InputErrors naming the file.

  The damage in a truncated or overwritten gzip file shows only when the
  reader gets there, deep inside a text or CSV reader (or a tf.data
  generator): the error must name the file there.
  """

  def _checked(self, read, size):
    try:
      return read(size)
    except (EOFError, OSError, zlib.error) as e:
      raise InputError(_gzip_problem(e), path=self.name) from None

  def read(self, size=-1):
    return self._checked(super().read, size)

  def read1(self, size=-1):
    return self._checked(super().read1, size)

  def peek(self, n):
    return self._checked(super().peek, n)


def open_text(path: str | os.PathLike) -> TextIO:
  """Opens `path` for streaming text reading, gunzipping if it is gzip data.

  Bytes that are not UTF-8 come through as surrogate escapes (U+DC80..U+DCFF),
  so a reader can name them (`not_utf8`).

  Raises InputError if the file does not exist or is a directory, or if it is
  named `.gz` but does not start like gzip data.
  """
  path = os.fspath(path)
  if not files_lib.exists(path):
    raise InputError("no such file", path=path)
  if files_lib.isdir(path):
    raise InputError("is a directory, expected a file", path=path)
  with files_lib.open_file(path, "rb") as f:
    magic = f.read(2)
  if magic == b"\x1f\x8b":
    raw = files_lib.open_file(path, "rb")
    reader = _GzipReader(path, "rb", fileobj=raw)
    reader.myfileobj = raw  # closed with the reader, as a file it opened itself
    return io.TextIOWrapper(reader, encoding="utf-8", errors="surrogateescape", newline="")
  if path.endswith(".gz"):
    raise InputError("named .gz but is not gzip data (rename it if it is plain text)",
                     path=path)
  return io.TextIOWrapper(files_lib.open_file(path, "rb"), encoding="utf-8",
                          errors="surrogateescape", newline="")


_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def not_utf8(text: str) -> Optional[str]:
  """`'byte 0xNN'` for the first byte of `text` that was not UTF-8 (see
  `open_text`), or None when it is all UTF-8."""
  bad = _NOT_UTF8.search(text)
  return None if bad is None else f"byte 0x{ord(bad.group()) - 0xDC00:02x}"


def _printable(text: str) -> str:
  """`text` with bytes that were not UTF-8 shown as U+FFFD (descriptions)."""
  return _NOT_UTF8.sub("\ufffd", text)


def normalise_sequence(seq: str, *, path: Optional[str] = None,
                       record: Optional[str] = None,
                       max_length: Optional[int] = None) -> str:
  """Upper-cases `seq`, strips one trailing `*`, and checks every character.

  Args:
    seq: raw residues (whitespace already removed).
    path, record: for the error message.
    max_length: if given, a longer sequence is an error.

  Returns:
    The normalised sequence.

  Raises:
    InputError naming path, record and the 1-based position of the first
    character that is not a residue, or the problem (empty, too long).
  """
  seq = seq.upper()
  if seq.endswith("*"):
    seq = seq[:-1]
  if not seq:
    raise InputError("record has no sequence", path=path, record=record)
  bad = _NOT_RESIDUE.search(seq)
  if bad is not None:
    char = bad.group()
    if char == "*":
      what = "internal '*' stop codon"
    elif not_utf8(char):
      what = f"{not_utf8(char)} (not UTF-8 text) is not a residue"
    else:
      what = f"character {char!r} is not a residue"
    raise InputError(what, path=path, record=record, position=bad.start() + 1)
  if max_length is not None and len(seq) > max_length:
    raise InputError(f"sequence has {len(seq)} residues, more than max_length={max_length}",
                     path=path, record=record)
  return seq


def _fasta_records(path: str) -> Iterator[tuple[str, str, int]]:
  """Yields (header without '>', raw sequence, header line number) per record."""
  header = None
  header_line = 0
  chunks: list[str] = []
  with open_text(path) as f:
    for lineno, line in enumerate(f, 1):
      if line.startswith(">"):
        if header is not None:
          yield header, "".join(chunks), header_line
        header, header_line, chunks = line[1:].strip(), lineno, []
      elif header is None:
        if line.strip():
          raise InputError(f"line {lineno}: sequence data before the first '>' header "
                           "(not a FASTA file?)", path=path)
      else:
        chunks.append(_WHITESPACE.sub("", line))
  if header is not None:
    yield header, "".join(chunks), header_line


def read_fasta_headers(path: str | os.PathLike, *, max_length: Optional[int] = None,
                       check_duplicates: bool = True) -> Iterator[tuple[str, str, str]]:
  """Like `read_fasta` but yields `(id, header, sequence)` with the full header."""
  path = os.fspath(path)
  seen: set[str] = set()
  n = 0
  for header, raw, lineno in _fasta_records(path):
    n += 1
    if not header:
      raise InputError(f"line {lineno}: empty FASTA header", path=path)
    rid = header.split(None, 1)[0]
    if not_utf8(rid):
      raise InputError(f"line {lineno}: record id has {not_utf8(rid)}, which is not UTF-8 "
                       "text (ids must be UTF-8: they name the output datasets)", path=path)
    header = _printable(header)
    if check_duplicates:
      if rid in seen:
        raise InputError("duplicate record id", path=path, record=rid)
      seen.add(rid)
    yield rid, header, normalise_sequence(raw, path=path, record=rid, max_length=max_length)
  if n == 0:
    raise InputError("no FASTA records (empty file?)", path=path)


def read_fasta(path: str | os.PathLike, *, max_length: Optional[int] = None,
               check_duplicates: bool = True) -> Iterator[tuple[str, str]]:
  """Streams `(id, sequence)` from a FASTA file (plain or gzipped).

  Args:
    path: the FASTA file; any header format, multi-line records.
    max_length: if given, a longer sequence is an InputError.
    check_duplicates: a repeated id is an InputError (keeps the set of ids in
      memory; turn off for corpora with hundreds of millions of records).

  Yields:
    (id, sequence): id = first token of the header, sequence normalised as
    described in the module docstring.
  """
  for rid, _, seq in read_fasta_headers(path, max_length=max_length,
                                        check_duplicates=check_duplicates):
    yield rid, seq


# --- NetSurfP-2.0 / ProtTrans secondary-structure CSV ------------------------

def _label_fields(values: list[str], name: str, allowed: Optional[str], *, path: str,
                  record: str) -> list:
  if allowed is None:  # numeric 0/1 (written as 0.0 / 1.0)
    out = []
    for i, v in enumerate(values):
      try:
        x = float(v)
      except ValueError:
        raise InputError(f"{name} value {v!r} is not a number", path=path, record=record,
                         position=i + 1) from None
      if x not in (0.0, 1.0):
        raise InputError(f"{name} value {v!r} is not 0 or 1", path=path, record=record,
                         position=i + 1)
      out.append(int(x))
    return out
  for i, v in enumerate(values):
    if v not in allowed:
      raise InputError(f"{name} label {v!r} not one of {' '.join(allowed)}", path=path,
                       record=record, position=i + 1)
  return values


_LABEL_COLUMNS = {"dssp3": DSSP3, "dssp8": DSSP8, "disorder": None, "cb513_mask": None}


def read_netsurfp_csv(path: str | os.PathLike) -> Iterator[tuple[str, str, dict]]:
  """Streams `(id, sequence, labels)` from a NetSurfP-2.0 / ProtTrans CSV.

  The first column is named `seq` or `input`; header names are stripped of
  stray spaces. `id` is an `id` column if present, else the 0-based row index
  as a string.

  Yields:
    (id, sequence, labels) with labels a dict of per-residue lists, one entry
    per column present: `dssp3` and `dssp8` (one-letter states, lists of str),
    `disorder` and `cb513_mask` (lists of int 0/1). Every list has the length
    of the sequence.

  Raises:
    InputError for a missing sequence column, a row with the wrong number of
    fields, a label list whose length differs from the sequence, or an unknown
    label (naming the 1-based residue position).
  """
  path = os.fspath(path)
  with open_text(path) as f:
    reader = csv.reader(f)
    try:
      header = [h.strip() for h in next(reader)]
    except StopIteration:
      raise InputError("empty file, expected a CSV header", path=path) from None
    if "seq" in header:
      seq_col = header.index("seq")
    elif "input" in header:
      seq_col = header.index("input")
    else:
      raise InputError(f"no 'seq' or 'input' column in header {header}", path=path)
    id_col = header.index("id") if "id" in header else None
    label_cols = [(header.index(n), n, allowed) for n, allowed in _LABEL_COLUMNS.items()
                  if n in header]
    n = 0
    for row_index, row in enumerate(reader):
      if not row or all(not c.strip() for c in row):
        continue
      rid = row[id_col].strip() if id_col is not None and id_col < len(row) else str(row_index)
      if len(row) != len(header):
        raise InputError(f"row has {len(row)} fields, header has {len(header)}", path=path,
                         record=rid)
      seq = normalise_sequence("".join(row[seq_col].split()), path=path, record=rid)
      labels = {}
      for col, name, allowed in label_cols:
        values = row[col].split()
        if len(values) != len(seq):
          raise InputError(f"{name} has {len(values)} labels for {len(seq)} residues",
                           path=path, record=rid)
        labels[name] = _label_fields(values, name, allowed, path=path, record=rid)
      n += 1
      yield rid, seq, labels
    if n == 0:
      raise InputError("no data rows", path=path)


# --- DeepLoc -------------------------------------------------------------------

def parse_deeploc_header(header: str) -> tuple[str, Optional[str], Optional[str]]:
  """`'Q9Y4C2 Cell.membrane-M'` -> `('Q9Y4C2', 'Cell.membrane', 'M')`.

  A bare id gives `(id, None, None)`; a location without a `-M|S|U` suffix
  gives `(id, location, None)`. `Cytoplasm-Nucleus-U` keeps its combined
  location `Cytoplasm-Nucleus`.
  """
  parts = header.split()
  rid = parts[0]
  if len(parts) < 2:
    return rid, None, None
  label = parts[1]
  location, sep, suffix = label.rpartition("-")
  if sep and suffix in MEMBRANE_LABELS:
    return rid, location, suffix
  return rid, label, None


def read_deeploc_fasta(path: str | os.PathLike, *, check_duplicates: bool = True
                       ) -> Iterator[tuple[str, str, Optional[str], Optional[str]]]:
  """Streams `(id, sequence, location, membrane)` from a DeepLoc FASTA.

  membrane is "M" (membrane-bound), "S" (soluble), "U" (unknown) or None when
  the header has no suffix; location is None when the header is a bare id
  (labels then come from `read_deeploc_labels_csv`).
  """
  for _, header, seq in read_fasta_headers(path, check_duplicates=check_duplicates):
    rid, location, membrane = parse_deeploc_header(header)
    yield rid, seq, location, membrane


def read_deeploc_labels_csv(path: str | os.PathLike) -> dict[str, str]:
  """Reads a DeepLoc `Label,Class` CSV (header id -> location) into a dict.

  Raises InputError for a missing column, an empty id or class, or a
  duplicate id.
  """
  path = os.fspath(path)
  out: dict[str, str] = {}
  with open_text(path) as f:
    reader = csv.reader(f)
    try:
      header = [h.strip() for h in next(reader)]
    except StopIteration:
      raise InputError("empty file, expected a 'Label,Class' header", path=path) from None
    if "Label" not in header or "Class" not in header:
      raise InputError(f"expected columns 'Label' and 'Class', got {header}", path=path)
    id_col, class_col = header.index("Label"), header.index("Class")
    for lineno, row in enumerate(reader, 2):
      if not row or all(not c.strip() for c in row):
        continue
      if len(row) <= max(id_col, class_col):
        raise InputError(f"line {lineno}: {len(row)} fields, expected {len(header)}",
                         path=path)
      rid, cls = row[id_col].strip(), row[class_col].strip()
      if not rid or not cls:
        raise InputError(f"line {lineno}: empty id or class", path=path, record=rid or None)
      if rid in out:
        raise InputError("duplicate id", path=path, record=rid)
      out[rid] = cls
  if not out:
    raise InputError("no label rows", path=path)
  return out


def is_validation(record_id: str, fraction: float) -> bool:
  """Deterministic hash split: True for ~`fraction` of ids (crc32 mod 10000)."""
  return zlib.crc32(record_id.encode("utf-8")) % 10_000 < round(fraction * 10_000)


def resolve_files(patterns, corpus: str) -> list[str]:
  """Sorted, de-duplicated regular files matched by paths/globs `patterns`.

  InputError naming the pattern that matches nothing (`corpus` names the
  corpus in the message).
  """
  files = set()
  for p in patterns:
    p = os.fspath(p) if files_lib.is_url(p) else os.path.expanduser(os.fspath(p))
    matched = (files_lib.glob(p) if glob.has_magic(p)
               else ([p] if files_lib.exists(p) else []))
    if not matched:
      raise InputError(f"matches no file (corpus {corpus!r})", path=p)
    files.update(m for m in matched if files_lib.isfile(m))
  if not files:
    raise InputError(f"patterns {list(patterns)} match no regular file (corpus {corpus!r})")
  return sorted(files)
