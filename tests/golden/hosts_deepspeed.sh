#!/bin/bash
# Multi-node sora run written by `sora-launch hosts --hostfile /shared/hostfile`; run it again with:
#   bash /shared/runs/x/hosts.sh
# 2 host(s): node-a (8 ranks), node-b (8 ranks)
# Per-rank logs: /shared/runs/x/rank-logs/rank-<RANK>.log; per-host logs next to them.
set -u
mkdir -p /shared/runs/x/rank-logs

# DeepSpeed's runner starts every host of the hostfile (pdsh over ssh).
cd /shared/sora
source /shared/sora/.venv/bin/activate
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}
export PYTHONFAULTHANDLER=${PYTHONFAULTHANDLER:-1}
export NCCL_DEBUG=INFO
exec python -u -m deepspeed.launcher.runner --no_local_rank --hostfile /shared/hostfile --master_addr node-a --master_port 29500 --module \
  launcher.rank --forward-usr1 --log-dir /shared/runs/x/rank-logs --exit-dir /shared/runs/x/.exit-codes sora.cli train configs/dit.yaml run.dir=/shared/runs/x
