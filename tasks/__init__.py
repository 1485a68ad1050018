"""SeqIO tasks of protjax; importing this package registers them.

Names are `{corpus}_{objective}`: corpus in protjax_sample, uniref50,
uniref100, bfd; objective in t5, bert, electra (e.g. `protjax_sample_t5`).
"""
from tasks import pretraining  # noqa: F401  (registers the tasks)
