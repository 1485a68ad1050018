"""Pretraining tasks: UniRef50, UniRef100, BFD and the bundled sample corpus.

protjax never downloads data. The FASTA shards of the big corpora (paths or
globs, plain or gzipped) come from, in order of precedence:
1. `source_files=` of `protjax.data.pipeline.get_dataset` /
   `DataConfig.source_files` (gin) / `protjax-data --source` (flag);
2. `set_source_files(corpus, patterns)`;
3. the environment variable `PROTJAX_<CORPUS>_FILES` (comma-separated).
Building a dataset for a corpus with none of these set is an InputError.

`protjax_sample` reads the small Swiss-Prot FASTA files bundled in
`protjax/data/sample/` (see SOURCE.md there: UniProt, CC BY 4.0).
"""
from __future__ import annotations

import os
from typing import Sequence

from protjax.data.preprocessors import OBJECTIVE_NAMES
from protjax.data.registry import register_task
from protjax.data.sources import FastaSource

CORPORA = ("protjax_sample", "uniref50", "uniref100", "bfd")

_source_files: dict[str, list[str]] = {}


def sample_dir() -> str:
  """Directory of the bundled sample FASTA (works from a checkout or an install)."""
  import protjax.data  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(protjax.data.__file__), "sample")


def set_source_files(corpus: str, patterns: Sequence[str]) -> None:
  """Sets the FASTA paths/globs of `corpus` (uniref50, uniref100 or bfd)."""
  if corpus not in CORPORA or corpus == "protjax_sample":
    raise ValueError(f"corpus must be one of {CORPORA[1:]}, got {corpus!r}")
  _source_files[corpus] = list(patterns)


def source_files(corpus: str) -> list[str]:
  """The patterns set for `corpus` (empty if none: building a dataset then fails)."""
  if corpus == "protjax_sample":
    return [os.path.join(sample_dir(), "*.fasta")]
  if corpus in _source_files:
    return _source_files[corpus]
  env = os.environ.get(f"PROTJAX_{corpus.upper()}_FILES", "")
  return [p for p in env.split(",") if p]


def _register_all() -> None:
  for corpus in CORPORA:
    # Duplicate-id checks keep every id of a file in memory: fine for the
    # sample, too costly for files of hundreds of millions of records.
    source = FastaSource(lambda c=corpus: source_files(c), name=corpus,
                         check_duplicates=corpus == "protjax_sample")
    for objective in OBJECTIVE_NAMES:
      register_task(f"{corpus}_{objective}", source, objective)


_register_all()
