#!/bin/bash
# The GPU benchmarks of bench/RESULTS.md in one go, each under a time limit so
# that one slow compile cannot eat the others' time:
#   bash bench/gpu_checks.sh FASTA OUT_DIR [train|embed|all]
# FASTA: proteins to embed (../shared/data/proteomes/yeast_s288c.fasta).
# JAX gets 45% of GPU memory so torch can share the card.
set -u
fasta=${1:?FASTA}; out=${2:?OUT_DIR}; what=${3:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
# Compiling ProtT5-base's train step on an H200 took over 150 s (RESULTS.md):
# JAX's persistent cache lets the timed run reuse what --compile_only built
# (on this CPU the timed run found the train step in the cache: tiny, 2026-11-30).
export JAX_COMPILATION_CACHE_DIR="${TMPDIR:-/tmp}/protjax_jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
step() {  # config batch limit_s [flags]
  timeout "$3" python3 bench/train_step.py --config "$1" --dtype bfloat16 \
      --batch_size "$2" --attention_impl xla "${@:4}"
}
train() {  # config batch limit_s
  step "$@" --repeats 5 --warmup 2 --out "$out/train_step_$1_bfloat16_gpu.json" \
      | grep -v '^step '
}
if [[ $what == train || $what == all ]]; then
  step large 16 500 --compile_only || exit 1
  train large 16 400
  train base 32 300
fi
if [[ $what == embed || $what == all ]]; then
  timeout 300 python3 bench/embed_throughput.py --fasta "$fasta" --config xl \
      --dtype bf16 --hf_dtype fp16 --sample 1000 --max_length 1000 \
      --token_budget 65536 --no_pipeline --repeats 3 --out_dir "$out"
fi
