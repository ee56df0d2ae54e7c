"""Result files come from scripts: scripts/demo.sh times its stages and, at the end, writes
benchmarks/results/demo_<accelerator>.json with benchmarks/summarise_run.py from what the run wrote.
Checked here with stand-ins for the `sora` commands (the real demo takes 13 minutes), in a copy of
the scripts so the committed result file is not touched."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STANDIN_SORA = r'''#!/bin/sh
# stand-in for `sora`: writes what each subcommand would
case "$1" in
  synth) mkdir -p "$3"; "$PYTHON" -c "import json, sys; from sora.data.world import WORLD_VERSION as v
json.dump({'world_version': v}, open(sys.argv[1] + '/manifest.json', 'w'))" "$3" ;;
  train-vae) mkdir -p runs/demo-vae; : > runs/demo-vae/vae.safetensors
     printf '{"step": 0, "loss": 1.0}\n{"step": 199, "loss": 0.5, "eval_psnr": 21.5, "eval_ssim": 0.79, "eval_clips": 32}\n' > runs/demo-vae/metrics.jsonl ;;
  evaluate) mkdir -p runs/demo/samples; cat > runs/demo/samples/adherence.json <<'J'
{"summary": {"colour_accuracy": 1.0, "motion_accuracy": 0.875, "n": 16}, "by_size": {"9x48x48": {"n": 8}},
 "clips": [{"seed": 0}, {"seed": 0}]}
J
  ;;
esac
'''
STANDIN_LAUNCH = r'''#!/bin/sh
# stand-in for `sora-launch local --nproc N train ...`: a finished run of 10 steps
mkdir -p runs/demo
printf 'sample:\n  first_frame: generate\n  steps: 20\n  cfg: 4.0\n' > runs/demo/config.yaml
: > runs/demo/metrics.jsonl
for s in 0 1 2 3 4 5 6 7 8 9; do
  printf '{"step": %d, "loss": 0.%d, "tokens_per_s": 100%d, "mfu": 0.3, "packing_efficiency": 0.99}\n' $s $((9 - s)) $s >> runs/demo/metrics.jsonl
done
echo "nproc $3" > runs/demo/launched_with
'''


def test_demo_writes_its_result_file_from_the_run(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo.sh", repo / "scripts")
    for f in ("summarise_run.py", "common.py"):
        shutil.copy(ROOT / "benchmarks" / f, repo / "benchmarks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sora", STANDIN_SORA), ("sora-launch", STANDIN_LAUNCH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PY=str(bin_dir), PYTHON=sys.executable, PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu",
               SORA_SETUP_SECONDS="7")
    r = subprocess.run(["bash", str(repo / "scripts" / "demo.sh")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads((repo / "benchmarks" / "results" / "demo_cpu.json").read_text())
    assert out["steps"] == 10 and out["final_loss"] == 0.0
    assert out["tokens_per_s_median"] == 1005.5                 # steps 2..9 (the first fifth is warm-up)
    assert out["packing_efficiency_median"] == 0.99 and out["adherence"]["motion_accuracy"] == 0.875
    assert out["adherence_seeds"] == 1 and out["sampling"] == {"first_frame": "generate", "steps": 20, "cfg": 4.0}
    assert out["vae_eval"] == {"step": 199, "psnr": 21.5, "ssim": 0.79, "clips": 32}
    assert list(out["demo_stage_seconds"]) == ["setup", "synth", "vae", "dit", "sample_and_score"]
    assert out["demo_stage_seconds"]["setup"] == 7 and out["demo_wall_seconds"] >= 7
    assert set(out["load"]) == {"loadavg_at_start", "loadavg_at_end"}
    for key in ("device", "date", "host", "torch", "deepspeed", "commit"):
        assert key in out, key
    assert (repo / "runs" / "demo" / "launched_with").read_text().strip() == "nproc 2"
