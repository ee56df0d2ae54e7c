#!/usr/bin/env bash
# The whole pipeline on the embedded moving-shapes world, on CPU. Idempotent: finished stages are
# kept (data with the same seed, a trained VAE, a finished DiT run resumes and only re-exports).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin}
DATA=${DATA:-data/shapes}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
start=$(date +%s)
stage() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

stage "1/4 synthesise the moving-shapes dataset -> $DATA"
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

stage "2/4 train the causal VAE (stage 1)"
if [ -f runs/demo-vae/vae.safetensors ]; then echo "kept: runs/demo-vae/vae.safetensors exists"; else
  "$PY/sora" train-vae configs/demo-vae.yaml data.path="$DATA"; fi

stage "3/4 train the DiT on 2 ranks under DeepSpeed ZeRO-3 (stage 2)"
"$PY/sora-launch" local --nproc 2 train configs/demo.yaml data.path="$DATA"

stage "4/4 sample held-out prompts at 9 and 17 frames, two sizes each (48x64 never seen in training), score per duration"
"$PY/sora" evaluate --run runs/demo --data "$DATA"
echo
echo "samples (mp4 + gif): runs/demo/samples/   scores: runs/demo/samples/adherence.json"
echo "metrics: runs/demo/metrics.jsonl   total $(( $(date +%s) - start ))s"
