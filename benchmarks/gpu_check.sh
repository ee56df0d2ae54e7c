#!/usr/bin/env bash
# One prepared check for a GPU machine (H100/H200; torch, triton, numpy, pytest, ninja; no network).
# Under 8 minutes (BUDGET_S, default 470 s): every section has its own timeout, the run a deadline,
# and the sections come in the order a short loan must still yield them; a failing or timed-out
# section is recorded and the next one runs. Everything lands under $OUT:
#   summary.json (per section: rc, seconds, limit, timed_out; the smoke verdict), env.json,
#   smoke.json, <section>.log (pytest -v: one line per test as it finishes), kernels_cuda.*, seqlen_cuda.*
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Budgets (seconds) and why. Autotuning compiles and times every config of a kernel once per key
# (head dim, GQA groups, causal, precision, dtypes), at roughly 1-2 s per config:
#   env         15  versions, nvidia-smi
#   build_ext  240  in the background from the start: sora._C's CUDA kernels (csrc/nvcc_flags.py:
#                   4 cubins + PTX per .cu); waited for before pytest_gpu_rest
#   smoke       90  benchmarks/gpu_smoke.py with SORA_AUTOTUNE=0: one compile per kernel (~12, plus
#                   the DiT's shapes), fwd+bwd of each kernel at a realistic shape, 10 DiT steps on
#                   `triton` (checkpointing on) and on `auto`: a verdict in the first ~1.5 minutes
#   pytest_gpu_triton 180  -m gpu tests/test_triton_kernels.py, autotuned: attention has 5 fwd + 5 dK/dV
#                   + 5 dQ configs and its 5 GPU cases are 5 keys (75 compiles); patch embed/unembed 5
#                   configs x about 8 keys (40); RoPE, adaLN, patchify are not tuned (~12): ~130 compiles
#   pytest_gpu_rest 45  -m gpu over the other test files (the CUDA extension's kernels)
#   kernels     60  benchmarks/kernel_ops.py --device cuda (compiled binaries come from Triton's disk
#                   cache; its shapes' keys are tuned again: ~30 timings)
#   seqlen      75  benchmarks/seqlen.py, DiT-1B at 8k-64k tokens
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
START=$(date +%s)
DEADLINE=$(( START + ${BUDGET_S:-470} ))
SUMMARY="$OUT/sections.tsv"
: > "$SUMMARY"

section() {  # section NAME TIMEOUT_S CMD...  (never fails the script)
  local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) - 5 ))
  if (( left < 10 )); then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "no time left" >> "$SUMMARY"; return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (timeout ${limit}s, $(( $(date +%s) - START ))s in)"
  local t0=$(date +%s) rc=0
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" >> "$SUMMARY"
  tail -n 15 "$OUT/$name.log" || true
  echo "== $name: rc=$rc in ${dt}s"
  return 0
}

section env 15 "$PY" -c "
import json, platform, subprocess, torch
def v(m):
    try: return __import__(m).__version__
    except Exception as e: return 'absent: %s' % e
try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version,clocks.max.sm', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=10).stdout.strip()
except Exception as e:
    smi = 'nvidia-smi failed: %s' % e
commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip() or None
json.dump({'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'nvidia_smi': smi,
           'capability': torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
           'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': v('triton'), 'numpy': v('numpy'),
           'deepspeed': v('deepspeed'), 'flash_attn': v('flash_attn'), 'python': platform.python_version(),
           'commit': commit}, open('$OUT/env.json', 'w'), indent=2)
print(open('$OUT/env.json').read())"

# sora._C with its CUDA kernels, built while the Triton sections run (their compiles are single-threaded).
BUILD_PID=
if [[ -f setup.py && -d csrc ]]; then
  ( t0=$(date +%s); rc=0
    MAX_JOBS=8 timeout --kill-after=10 240 "$PY" setup.py build_ext --inplace > "$OUT/build_ext.log" 2>&1 || rc=$?
    printf '%s\t%s\t%s\t%s\n' build_ext "$rc" "$(( $(date +%s) - t0 ))" 240 >> "$SUMMARY" ) &
  BUILD_PID=$!
fi

section smoke 90 env SORA_AUTOTUNE=0 "$PY" benchmarks/gpu_smoke.py --out "$OUT"

section pytest_gpu_triton 180 "$PY" -m pytest -v -rs -m gpu -p no:cacheprovider tests/test_triton_kernels.py

if [[ -n "$BUILD_PID" ]]; then
  echo "== waiting for build_ext"
  wait "$BUILD_PID" || true
  tail -n 5 "$OUT/build_ext.log" || true
fi
section pytest_gpu_rest 45 "$PY" -m pytest -v -rs -m gpu -p no:cacheprovider --ignore=tests/test_triton_kernels.py tests

section kernels 60 "$PY" benchmarks/kernel_ops.py --device cuda --out "$OUT"

section seqlen 75 "$PY" benchmarks/seqlen.py --device cuda --sizes DiT-1B --lengths 8192,16384,32768,65536 --out "$OUT"

"$PY" - "$SUMMARY" "$OUT/summary.json" "$OUT/smoke.json" <<'EOF'
import json, os, sys
rows = []
for line in open(sys.argv[1]):
    name, rc, secs, limit = line.rstrip("\n").split("\t")
    rc_i = int(rc) if rc.lstrip("-").isdigit() else None
    rows.append({"section": name, "rc": rc_i, "ok": rc_i == 0, "seconds": int(secs),
                 "timed_out": rc_i in (124, 137), "limit": limit})
smoke = json.load(open(sys.argv[3])) if os.path.exists(sys.argv[3]) else None
verdict = None if smoke is None else {c["check"]: c["ok"] for c in smoke["checks"]}
json.dump({"sections": rows, "all_ok": all(r["ok"] for r in rows), "smoke": verdict},
          open(sys.argv[2], "w"), indent=2)
print(json.dumps({"sections": rows, "smoke": verdict}, indent=1))
EOF
