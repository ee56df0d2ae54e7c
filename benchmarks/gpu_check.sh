#!/usr/bin/env bash
# One prepared check for a GPU machine (H100/H200; torch, triton, numpy, pytest, ninja; no network).
# Finishes in under 8 minutes: every section has its own timeout and the whole run a deadline.
# A failing section is recorded and the next one runs. Everything lands under $OUT:
#   summary.json (one entry per section: rc, seconds, timed_out), env.json, <section>.log,
#   pytest_gpu.xml, kernels_cuda.json/.md/.png, seqlen_cuda.json/.md/.png
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-450} ))      # 7.5 min for all sections
SUMMARY="$OUT/sections.tsv"
: > "$SUMMARY"

section() {  # section NAME TIMEOUT_S CMD...  (never fails the script)
  local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) - 5 ))
  if (( left < 10 )); then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "no time left" >> "$SUMMARY"; return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (timeout ${limit}s)"
  local t0=$(date +%s) rc=0
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" >> "$SUMMARY"
  tail -n 15 "$OUT/$name.log" || true
  echo "== $name: rc=$rc in ${dt}s"
  return 0
}

section env 30 "$PY" -c "
import json, platform, subprocess, torch
def v(m):
    try: return __import__(m).__version__
    except Exception as e: return 'absent: %s' % e
try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version,clocks.max.sm', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as e:
    smi = 'nvidia-smi failed: %s' % e
json.dump({'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'nvidia_smi': smi,
           'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': v('triton'), 'numpy': v('numpy'),
           'deepspeed': v('deepspeed'), 'flash_attn': v('flash_attn'), 'python': platform.python_version()},
          open('$OUT/env.json', 'w'), indent=2)
print(open('$OUT/env.json').read())"

# The C++/CUDA extension (csrc/) for the cpp/cuda backends; the Triton backends need no build.
if [[ -f setup.py && -d csrc ]]; then
  section build_ext 150 "$PY" setup.py build_ext --inplace
fi

# GPU tests: the kernel tests (Triton compiled, CUDA extension) on the device.
section pytest_gpu 100 "$PY" -m pytest -q -x -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" \
  $(ls tests/test_ops.py tests/test_triton_kernels.py tests/test_csrc.py tests/test_flops.py 2>/dev/null)

section kernels 90 "$PY" benchmarks/kernel_ops.py --device cuda --out "$OUT"

section seqlen 150 "$PY" benchmarks/seqlen.py --device cuda --sizes DiT-1B --lengths 8192,16384,32768,65536 --out "$OUT"

"$PY" - "$SUMMARY" "$OUT/summary.json" <<'EOF'
import json, sys
rows = []
for line in open(sys.argv[1]):
    name, rc, secs, limit = line.rstrip("\n").split("\t")
    rc_i = int(rc) if rc.lstrip("-").isdigit() else None
    rows.append({"section": name, "rc": rc_i, "ok": rc_i == 0, "seconds": int(secs),
                 "timed_out": rc_i in (124, 137), "limit": limit})
json.dump({"sections": rows, "all_ok": all(r["ok"] for r in rows)}, open(sys.argv[2], "w"), indent=2)
print(json.dumps(rows, indent=1))
EOF
