"""Logical axis names: the only vocabulary models use to describe sharding.

Models annotate every parameter (`param_with_axes`) and the key activations
(`with_sharding_constraint`) with these names; `protjax.partitioning` holds the
single table that maps them to mesh axes. Activations have names of their own
(`act_*`) so a rule that shards weights over `data` (FSDP) can never shard an
activation by accident.
"""

# Parameter axes (t5x names, so t5x's rule tables apply unchanged).
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
RELPOS_BUCKETS = "relpos_buckets"

# Activation axes.
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"
ACT_HEADS = "act_heads"
ACT_KV = "act_kv"
ACT_VOCAB = "act_vocab"

PARAM_AXES = (VOCAB, EMBED, MLP, HEADS, KV, RELPOS_BUCKETS)
ACTIVATION_AXES = (BATCH, LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS, ACT_KV, ACT_VOCAB)
