"""The built-in pretraining tasks as SeqIO tasks: importing this registers them.

The tasks (`{corpus}_{objective}` and `{corpus}_prepared_{objective}` for
UniRef50, UniRef100, BFD and the bundled sample) and their corpus settings
are defined in `protjax.data.corpora`, without TensorFlow, so that the
batched pipelines can look them up without seqio; this module puts them in
seqio.TaskRegistry (`seqio.get_mixture_or_task(name)`), with every task
registered later, and re-exports the settings where they were.
"""
from protjax.data import registry
from protjax.data.corpora import (CORPORA, PREPARED_CORPORA, _source_files,  # noqa: F401
                                  sample_dir, sample_prepared_dir, set_source_files,
                                  source_files)

registry.enable_seqio()
