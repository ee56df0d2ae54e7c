#!/usr/bin/env bash
# The whole pipeline on the embedded moving-shapes world, on CPU. Idempotent: finished stages are
# kept (data with the same seed, a trained VAE, a finished DiT run resumes and only re-exports).
# Ends by writing benchmarks/results/demo_<accelerator>.json from what this run wrote
# (benchmarks/summarise_run.py: stage seconds, load, throughput, adherence, machine, commit).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin}
DATA=${DATA:-data/shapes}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}     # `make demo` exports cuda where nvidia-smi is
start=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
stages=()             # "key seconds" of each finished stage, for the result file
stage_key=
stage_t0=$start
stage() {             # stage KEY [TITLE...]: closes the previous stage's clock, opens this one's
  local now
  now=$(date +%s)
  if [ -n "$stage_key" ]; then stages+=("$stage_key $(( now - stage_t0 ))"); fi
  stage_key=$1
  stage_t0=$now
  shift
  if [ $# -gt 0 ]; then echo; echo "== $* ($(( now - start ))s)"; fi
}

stage synth "1/4 synthesise the moving-shapes dataset -> $DATA"
# Data from an older version of the world is re-synthesised; a DiT run trained on it is moved
# aside (not deleted), since its clips and its model no longer match.
current() { "$PY/python" -c 'import json, sys; from sora.data.world import WORLD_VERSION as v
sys.exit(json.load(open(sys.argv[1])).get("world_version", 1) != v)' "$DATA/manifest.json"; }
if [ -f "$DATA/manifest.json" ] && ! current; then
  echo "$DATA is from an older moving-shapes world: re-synthesising"
  rm -f "$DATA"/*.tar "$DATA/manifest.json"
  if [ -d runs/demo ]; then mv runs/demo "runs/demo.stale-$(date +%Y%m%d-%H%M%S)"; echo "moved the old runs/demo aside"; fi
fi
if [ -f "$DATA/manifest.json" ]; then echo "kept: $DATA/manifest.json exists"; else
  "$PY/sora" synth --out "$DATA" --clips 512 --heldout 32 --seed 0; fi

stage vae "2/4 train the causal VAE (stage 1)"
if [ -f runs/demo-vae/vae.safetensors ]; then echo "kept: runs/demo-vae/vae.safetensors exists"; else
  "$PY/sora" train-vae configs/demo-vae.yaml data.path="$DATA"; fi

NPROC=${NPROC:-2}
if [ "$DS_ACCELERATOR" = cuda ]; then   # one rank per GPU: NCCL cannot put two ranks on one device
  gpus=$("$PY/python" -c 'import torch; print(torch.cuda.device_count())')
  if [ "$gpus" -lt "$NPROC" ]; then
    echo "$gpus GPU(s) visible: training on $gpus rank(s) instead of $NPROC (the demo's global batch shrinks)"
    NPROC=$gpus
  fi
fi
stage dit "3/4 train the DiT on $NPROC ranks under DeepSpeed ZeRO-3 (stage 2, $DS_ACCELERATOR)"
"$PY/sora-launch" local --nproc "$NPROC" train configs/demo.yaml data.path="$DATA"

stage sample_and_score "4/4 sample held-out prompts at 9 and 17 frames, two sizes each (48x64 never seen in training), score per duration"
"$PY/sora" evaluate --run runs/demo --data "$DATA"
stage done
total=$(( $(date +%s) - start ))

# `make demo` passes the setup's seconds (SORA_SETUP_SECONDS); the rest is timed here.
"$PY/python" - runs/demo/demo_timings.json "$total" "${SORA_SETUP_SECONDS:-}" "$load_start" "$DS_ACCELERATOR" \
    "${stages[@]}" <<'PYEOF'
import json, sys
out, total, setup, load_start, accelerator, *finished = sys.argv[1:]
stages = {"setup": int(setup)} if setup else {}
stages.update({key: int(secs) for key, secs in (s.split() for s in finished)})
json.dump({"stages": stages, "total_seconds": int(total) + stages.get("setup", 0), "accelerator": accelerator,
           "loadavg_at_start": load_start, "loadavg_at_end": " ".join(open("/proc/loadavg").read().split()[:3])},
          open(out, "w"), indent=2)
PYEOF
"$PY/python" benchmarks/summarise_run.py --run runs/demo --vae-run runs/demo-vae \
    --timings runs/demo/demo_timings.json --out "benchmarks/results/demo_${DS_ACCELERATOR}.json"
echo
echo "samples (mp4 + gif): runs/demo/samples/   scores: runs/demo/samples/adherence.json"
echo "metrics: runs/demo/metrics.jsonl   total ${total}s (+ setup ${SORA_SETUP_SECONDS:-?}s)"
echo "summary: benchmarks/results/demo_${DS_ACCELERATOR}.json"
