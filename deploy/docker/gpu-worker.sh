#!/bin/sh
# One worker process per GPU under `docker compose up --scale worker=N`.
#
# Docker hands every replica the same GPU list, so each replica claims one GPU index by taking an exclusive
# flock(1) on /run/lipcert-gpu/cuda<i>.lock (a volume shared by the replicas on this host) and runs
# `lipcert worker --device cuda:<i>` while holding it. The lock belongs to the worker process, so it is released
# when that process (or its container) dies and the next replica to start takes the GPU over. A replica that
# finds every GPU taken waits and tries again.
set -eu

LOCK_DIR="${LIPCERT_GPU_LOCK_DIR:-/run/lipcert-gpu}"
RETRY_S="${LIPCERT_GPU_RETRY_S:-30}"
mkdir -p "$LOCK_DIR"

if [ -n "${LIPCERT_GPU_COUNT:-}" ]; then
    count="$LIPCERT_GPU_COUNT"
else
    count="$(python -c 'import torch; print(torch.cuda.device_count())')"
fi
if [ "$count" -lt 1 ]; then
    echo "gpu-worker: no CUDA device is visible (is the NVIDIA container toolkit installed?)" >&2
    exit 1
fi

while :; do
    i=0
    while [ "$i" -lt "$count" ]; do
        exec 9>"$LOCK_DIR/cuda$i.lock"
        if flock -n 9; then
            echo "gpu-worker: claimed cuda:$i of $count"
            # fd 9 stays open in the worker, which keeps the GPU claimed for as long as it runs.
            exec lipcert worker --device "cuda:$i" "$@"
        fi
        exec 9>&-
        i=$((i + 1))
    done
    echo "gpu-worker: all $count GPUs are claimed by other replicas; retrying in ${RETRY_S}s" >&2
    sleep "$RETRY_S"
done
