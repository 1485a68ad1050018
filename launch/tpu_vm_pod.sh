#!/usr/bin/env bash
# Start protjax-train on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_vm_pod.sh TPU_NAME ZONE --gin_file=gin_configs/runs/prott5_xl_bfd.gin \
#       --gin.train.model_dir="'gs://BUCKET/prott5_xl_bfd'" \
#       --gin.DataConfig.source_files="('gs://BUCKET/bfd/*.fasta.gz',)"
#
# Every worker runs the same command; jax.distributed.initialize() detects
# the pod by itself (TPU_WORKER_HOSTNAMES), each worker reads its own shard
# of the data and only worker 0 writes logs and TensorBoard events. Model
# directories should be on GCS so every worker sees the same checkpoints. A
# preemption sends SIGTERM: the run saves at the step reached and exits;
# starting the same command again resumes from model_dir.
#
# Environment: REPO_DIR (checkout on the workers, default ~/protjax),
# SETUP=1 (pip install -e ".[tpu]" the checkout on every worker first: protjax
# and libtpu at the version jax pins), DRY_RUN=1 (print the gcloud command
# instead of running it). Each worker logs to REPO_DIR/train.log.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE PROTJAX_TRAIN_FLAGS..." >&2
  exit 2
fi
TPU_NAME=$1
ZONE=$2
shift 2
REPO_DIR=${REPO_DIR:-'~/protjax'}
FLAGS=$(printf '%q ' "$@")
REMOTE="cd ${REPO_DIR}"
if [[ "${SETUP:-0}" == 1 ]]; then
  REMOTE+=" && python3 -m pip install -q -e '.[tpu]'"
fi
REMOTE+=" && nohup python3 -m protjax.train ${FLAGS}> train.log 2>&1 &"
CMD=(gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all
     --command "${REMOTE}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  echo
else
  "${CMD[@]}"
fi
