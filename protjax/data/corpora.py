"""The built-in pretraining tasks: UniRef50, UniRef100, BFD and the bundled sample.

Importing this module registers their `registry.TaskSpec`s, without
TensorFlow or seqio (`protjax.data.config` imports it, so a prepared-corpus
run starts without their seconds of imports); `import tasks` registers them
as SeqIO tasks too.

Each corpus comes two ways, with the same objectives and feature converters:
`{corpus}_{objective}` streams its FASTA files (`sources.FastaSource`), and
`{corpus}_prepared_{objective}` reads a prepared corpus made once by
`protjax-data prepare` (`sources.PreparedSource`; the path for UniRef/BFD:
resume in seconds at any step, any number of hosts).

protjax never downloads data. The FASTA shards of the big corpora (paths or
globs, plain or gzipped) come from, in order of precedence:
1. `source_files=` of `protjax.data.pipeline.get_dataset` /
   `DataConfig.source_files` (gin) / `protjax-data --source` (flag);
2. `set_source_files(corpus, patterns)`;
3. the environment variable `PROTJAX_<CORPUS>_FILES` (comma-separated).
Building a dataset for a corpus with none of these set is an InputError.
For a `*_prepared` corpus the same settings name its one prepared folder
(e.g. `PROTJAX_UNIREF50_PREPARED_FILES=/data/uniref50_prepared`).

`protjax_sample` reads the small Swiss-Prot FASTA files bundled in
`protjax/data/sample/` (see SOURCE.md there: UniProt, CC BY 4.0);
`protjax_sample_prepared` prepares them on first use into
`$PROTJAX_CACHE_DIR` (default `~/.cache/protjax`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Sequence

from protjax.data.objectives import OBJECTIVE_NAMES
from protjax.data.registry import register_task

CORPORA = ("protjax_sample", "uniref50", "uniref100", "bfd")
PREPARED_CORPORA = tuple(f"{c}_prepared" for c in CORPORA)

_source_files: dict[str, list[str]] = {}


def sample_dir() -> str:
  """Directory of the bundled sample FASTA (works from a checkout or an install)."""
  import protjax.data  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(protjax.data.__file__), "sample")


def sample_prepared_dir() -> str:
  """The bundled sample as a prepared corpus, prepared on first use (about 1 s).

  Keyed by the sample files' contents and the format version; prepared in a
  temporary folder and renamed into place, so concurrent first uses agree.
  """
  from protjax.data import prepared  # pylint: disable=import-outside-toplevel
  files = sorted(os.path.join(sample_dir(), f) for f in os.listdir(sample_dir())
                 if f.endswith(".fasta"))
  digest = hashlib.sha256(str(prepared.VERSION).encode())
  for f in files:
    with open(f, "rb") as fh:
      digest.update(fh.read())
  cache = os.environ.get("PROTJAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "protjax")
  target = os.path.join(cache, f"protjax_sample_prepared-{digest.hexdigest()[:12]}")
  if not os.path.exists(os.path.join(target, "index.json")):
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="protjax_sample_prepared.", dir=cache)
    prepared.prepare(files, tmp, workers=1)
    try:
      os.rename(tmp, target)
    except OSError:  # another process got there first
      shutil.rmtree(tmp, ignore_errors=True)
  return target


def set_source_files(corpus: str, patterns: Sequence[str]) -> None:
  """Sets the FASTA paths/globs of `corpus` (uniref50, uniref100 or bfd), or the
  prepared folder of a `*_prepared` one."""
  settable = CORPORA[1:] + PREPARED_CORPORA[1:]
  if corpus not in settable:
    raise ValueError(f"corpus must be one of {settable}, got {corpus!r}")
  _source_files[corpus] = list(patterns)


def source_files(corpus: str) -> list[str]:
  """The patterns set for `corpus` (empty if none: building a dataset then fails)."""
  if corpus == "protjax_sample":
    return [os.path.join(sample_dir(), "*.fasta")]
  if corpus == "protjax_sample_prepared":
    return [sample_prepared_dir()]
  if corpus in _source_files:
    return _source_files[corpus]
  env = os.environ.get(f"PROTJAX_{corpus.upper()}_FILES", "")
  return [p for p in env.split(",") if p]


def _register_all() -> None:
  for corpus in CORPORA + PREPARED_CORPORA:
    for objective in OBJECTIVE_NAMES:
      # Duplicate-id checks keep every id of a file in memory: fine for the
      # sample, too costly for files of hundreds of millions of records.
      register_task(f"{corpus}_{objective}", lambda c=corpus: source_files(c), objective,
                    corpus=corpus, prepared=corpus in PREPARED_CORPORA,
                    check_duplicates=corpus == "protjax_sample")


_register_all()
