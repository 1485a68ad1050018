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
# BERT / ALBERT: rows of the learned absolute position table (40,000) and of
# the token-type table, and the width of the token-embedding space (ALBERT's
# factorised `embedding_size`, 128; BERT's equals `embed`). That width has a
# name of its own because ALBERT's `[token_embed, embed]` projection and the
# MLM head's `[embed, token_embed]` dense would otherwise name `embed` twice.
ABSPOS = "abspos"
TOKEN_TYPES = "token_types"
TOKEN_EMBED = "token_embed"

# Activation axes.
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"
ACT_HEADS = "act_heads"
ACT_KV = "act_kv"
ACT_VOCAB = "act_vocab"
# Transformer-XL / XLNet memory `[batch, layers, mem_len, embed]`
# (`protjax.models.recurrence`): its layer and memory-length axes.
ACT_LAYERS = "act_layers"
MEM_LENGTH = "mem_length"

PARAM_AXES = (VOCAB, EMBED, MLP, HEADS, KV, RELPOS_BUCKETS, ABSPOS, TOKEN_TYPES, TOKEN_EMBED)
ACTIVATION_AXES = (BATCH, LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS, ACT_KV, ACT_VOCAB,
                   ACT_LAYERS, MEM_LENGTH)
