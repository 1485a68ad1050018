#!/usr/bin/env bash
# Multi-node GPU training over plain SSH (no scheduler): one process per host,
# host 0 is the coordinator.
#
#   launch/gpu_multinode.sh "gpu0 gpu1 gpu2 gpu3" \
#       --gin_file=gin_configs/runs/prott5_xl_u50.gin \
#       --gin.train.model_dir="'/shared/runs/prott5_xl_u50'" ...
#
# Passes --coordinator_address=HOST0:PORT --num_processes=N --process_id=i to
# protjax-train on host i. Environment: PORT (default 29500), REPO_DIR
# (checkout on every host, default the current directory's path), DRY_RUN=1
# (print the ssh commands instead of running them).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 \"HOST0 HOST1 ...\" PROTJAX_TRAIN_FLAGS..." >&2
  exit 2
fi
read -r -a HOSTS <<< "$1"
shift
PORT=${PORT:-29500}
REPO_DIR=${REPO_DIR:-$(pwd)}
FLAGS=$(printf '%q ' "$@")
N=${#HOSTS[@]}
for i in "${!HOSTS[@]}"; do
  REMOTE="cd $(printf '%q' "${REPO_DIR}") && nohup python -m protjax.train \
--coordinator_address=${HOSTS[0]}:${PORT} --num_processes=${N} \
--process_id=${i} ${FLAGS}> train.${i}.log 2>&1 &"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "ssh ${HOSTS[$i]} ${REMOTE}"
  else
    ssh "${HOSTS[$i]}" "${REMOTE}"
  fi
done
