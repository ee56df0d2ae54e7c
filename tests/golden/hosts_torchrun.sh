#!/bin/bash
# Multi-node sora run written by `sora-launch hosts --hostfile /shared/hostfile`; run it again with:
#   bash /shared/runs/x/hosts.sh
# 2 host(s): node-a (8 ranks), node-b (8 ranks)
# Per-rank logs: /shared/runs/x/rank-logs/rank-<RANK>.log; per-host logs next to them.
set -u
mkdir -p /shared/runs/x/rank-logs

# One torchrun per host over ssh; they meet at the first host (c10d rendezvous).
PIDS=()
stop() { kill "${PIDS[@]}" 2>/dev/null; }  # ssh hangs up: the remote torchruns get SIGHUP
trap stop INT TERM
# node 0: node-a
ssh -tt node-a '
  cd /shared/sora
  source /shared/sora/.venv/bin/activate
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
  export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}
  export PYTHONFAULTHANDLER=${PYTHONFAULTHANDLER:-1}
  export NCCL_DEBUG=INFO
  exec python -m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node-a:29500 --rdzv-id sora --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    -m launcher.rank --forward-usr1 --log-dir /shared/runs/x/rank-logs --exit-dir /shared/runs/x/.exit-codes sora.cli train configs/dit.yaml run.dir=/shared/runs/x
' \
  >> /shared/runs/x/rank-logs/host-node-a.log 2>&1 < /dev/null &
PIDS+=($!)
# node 1: node-b
ssh -tt node-b '
  cd /shared/sora
  source /shared/sora/.venv/bin/activate
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
  export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}
  export PYTHONFAULTHANDLER=${PYTHONFAULTHANDLER:-1}
  export NCCL_DEBUG=INFO
  exec python -m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node-a:29500 --rdzv-id sora --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    -m launcher.rank --forward-usr1 --log-dir /shared/runs/x/rank-logs --exit-dir /shared/runs/x/.exit-codes sora.cli train configs/dit.yaml run.dir=/shared/runs/x
' \
  >> /shared/runs/x/rank-logs/host-node-b.log 2>&1 < /dev/null &
PIDS+=($!)
STATUS=0
for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=$?; done
echo "all hosts done, exit status $STATUS"
exit "$STATUS"
