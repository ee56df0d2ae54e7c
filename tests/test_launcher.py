"""sora-launch: sbatch rendering (golden), validation, the requeue trap, local torchrun, a real 2-rank run.

Regenerate the golden scripts deliberately with: SORA_UPDATE_GOLDEN=1 python -m pytest tests/test_launcher.py
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import cli, local, slurm

GOLDEN = Path(__file__).parent / "golden"

MINIMAL = slurm.SlurmJob(
    args=["train", "configs/demo.yaml"], nodes=1, gpus_per_node=8, output_dir="/scratch/sora/runs/slurm"
)
FULL = slurm.SlurmJob(
    args=["train", "configs/dit_1b_256p.yaml", "run.dir=/scratch/sora/runs/dit1b", "data.caption=a b"],
    nodes=4, gpus_per_node=8, partition="gpu", account="proj42", qos="high", constraint="h100",
    time="2-00:00:00", job_name="dit1b", cpus_per_task=96, mem="512G",
    output_dir="/scratch/sora/runs/dit1b",
    setup=["module load cuda/12.4", "source /scratch/sora/.venv/bin/activate"],
    sbatch_extra=["#SBATCH --exclusive"], signal_seconds=300,
)


@pytest.mark.parametrize("name,job", [("slurm_minimal", MINIMAL), ("slurm_full", FULL)])
def test_render_matches_golden(name, job):
    text = job.render()
    path = GOLDEN / f"{name}.sbatch"
    if os.environ.get("SORA_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; if intended, rerun with SORA_UPDATE_GOLDEN=1"
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid shell


def test_render_contract():
    text = FULL.render()
    assert "#SBATCH --signal=B:USR1@300\n#SBATCH --requeue\n" in text
    assert "#SBATCH --output=/scratch/sora/runs/dit1b/slurm-%j.out" in text
    assert "--output /scratch/sora/runs/dit1b/rank-logs/%j-node%n.log" in text
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in text
    assert "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}" in text
    assert "--nnodes \"$SLURM_NNODES\" --nproc-per-node 8" in text
    sora = "-m sora.cli train configs/dit_1b_256p.yaml run.dir=/scratch/sora/runs/dit1b 'data.caption=a b' &"
    assert sora in text  # args shell-quoted


@pytest.mark.parametrize("value,seconds", [
    ("30", 1800), ("90:30", 5430), ("04:00:00", 14400), ("48:00:00", 172800),
    ("1-12", 129600), ("1-00:30", 88200), ("2-01:02:03", 176523),
])
def test_time_limit_good(value, seconds):
    assert slurm.parse_time_limit(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "1h", "4:00:00:00", "1:60", "1-24", "1-2:3:4:5", "-5", "0", "00:00:00", " 30"]
)
def test_time_limit_bad(value):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        slurm.parse_time_limit(value)


@pytest.mark.parametrize("change,message", [
    ({"nodes": 0}, "nodes must be positive"),
    ({"gpus_per_node": -1}, "gpus-per-node must be positive"),
    ({"args": []}, "missing the sora subcommand"),
    ({"args": ["--steps", "3"]}, "missing the sora subcommand"),
    ({"time": "1:30"}, "leaves no room"),
    ({"time": "2 days"}, "bad time limit '2 days'"),
    ({"sbatch_extra": ["--exclusive"]}, "must be one line starting with '#SBATCH '"),
    ({"output_dir": "/my runs"}, "no spaces"),
    ({"mem": "lots"}, "bad --mem"),
])
def test_validation(change, message):
    job = slurm.SlurmJob(**{**MINIMAL.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        job.render()


def test_default_output_dir():
    assert slurm.default_output_dir(["train", "c.yaml", "run.dir=a", "run.dir=b"]) == "b"
    assert slurm.default_output_dir(["train", "c.yaml"]) == "runs/slurm"


def _fake_bin(tmp_path, name, body):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path.parent


def test_requeue_trap_forwards_usr1_then_requeues(tmp_path):
    """Run the rendered script with fake srun/scontrol: USR1 must reach srun, then the job requeues."""
    log = tmp_path / "log"
    log.mkdir()
    _fake_bin(tmp_path, "scontrol", f'[ "$1" = show ] && echo node1 && echo node2\n'
                                    f'[ "$1" = requeue ] && echo "$2" > {log}/requeued\nexit 0\n')
    bin_dir = _fake_bin(tmp_path, "srun", f"echo $$ > {log}/srun_pid\n"
                                          f"trap 'echo USR1 > {log}/srun_got; exit 0' USR1\n"
                                          f"touch {log}/srun_ready\n"
                                          "while :; do sleep 0.05; done\n")
    job = slurm.SlurmJob(**{**MINIMAL.__dict__, "output_dir": str(tmp_path / "out")})
    script = tmp_path / "job.sbatch"
    script.write_text(job.render())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]"}
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (log / "srun_ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let bash record SRUN_PID and enter `wait`
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=10)
    finally:
        if (log / "srun_pid").exists():
            subprocess.run(["kill", (log / "srun_pid").read_text().strip()], stderr=subprocess.DEVNULL)
        proc.kill()
    assert proc.returncode == 0
    assert (log / "srun_got").read_text() == "USR1\n"
    assert (log / "requeued").read_text() == "4242\n"
    assert "master node1:" in out


def test_script_exit_code_is_sruns_without_requeue(tmp_path):
    _fake_bin(tmp_path, "scontrol", f'[ "$1" = show ] && echo node1\n'
                                    f'[ "$1" = requeue ] && touch {tmp_path}/requeued\nexit 0\n')
    bin_dir = _fake_bin(tmp_path, "srun", "exit 3\n")
    job = slurm.SlurmJob(**{**MINIMAL.__dict__, "output_dir": str(tmp_path / "out")})
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1"}
    result = subprocess.run(["bash", "-c", job.render()], env=env, capture_output=True, timeout=10)
    assert result.returncode == 3
    assert not (tmp_path / "requeued").exists()


SLURM_ARGV = ["slurm", "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00"]


def test_cli_dry_run_prints_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(SLURM_ARGV + ["--dry-run", "train", "c.yaml", "run.dir=runs/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash\n")
    assert f"#SBATCH --output={tmp_path}/runs/x/slurm-%j.out" in out  # run.dir, made absolute
    assert "-m sora.cli train c.yaml run.dir=runs/x --dry-run &" in out  # after the subcommand: sora's
    assert not (tmp_path / "runs").exists()


def test_cli_submit_with_fake_sbatch(tmp_path, monkeypatch, capsys):
    bin_dir = _fake_bin(tmp_path, "sbatch", f'echo "$@" > {tmp_path}/sbatch_args\necho "123456;cluster1"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out_dir = tmp_path / "out"
    assert cli.main(SLURM_ARGV + ["--output-dir", str(out_dir), "train", "c.yaml"]) == 0
    assert capsys.readouterr().out == "123456\n"
    assert (out_dir / "slurm_job_id").read_text() == "123456\n"
    assert (out_dir / "rank-logs").is_dir()
    assert (tmp_path / "sbatch_args").read_text() == f"--parsable {out_dir}/job.sbatch\n"
    assert (out_dir / "job.sbatch").read_text().startswith("#!/bin/bash\n")


def test_cli_without_sbatch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert cli.main(SLURM_ARGV + ["--output-dir", str(tmp_path / "o"), "train", "c.yaml"]) == 1
    assert "sbatch not found on PATH" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "required"),
    (SLURM_ARGV[:-2] + ["--time", "25:99", "train"], "bad time limit '25:99'"),
    (SLURM_ARGV, "missing the sora subcommand"),
    (["local", "--nproc", "0", "train"], "nproc must be positive"),
    (["local", "--nproc", "2", "--bogus", "train"], "unrecognized arguments: --bogus"),
])
def test_cli_errors_show_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: sora-launch" in err and message in err


def test_local_command_cpu():
    argv, env = local.build_local_command(4, ["train", "c.yaml", "x=1"], {"PATH": "/bin"}, cuda=False)
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "4",
                    "--standalone", "-m", "sora.cli", "train", "c.yaml", "x=1"]
    assert env["DS_ACCELERATOR"] == "cpu"
    assert env["OMP_NUM_THREADS"] == str(max(1, os.cpu_count() // 4))
    assert env["PATH"] == "/bin"


def test_local_command_keeps_user_env_and_port():
    base = {"DS_ACCELERATOR": "cuda", "OMP_NUM_THREADS": "7"}
    argv, env = local.build_local_command(2, ["sample"], base, master_port=29511, cuda=False)
    assert env == base and env is not base
    assert argv[argv.index("--master-port") + 1] == "29511" and "--standalone" not in argv
    _, env = local.build_local_command(2, ["train"], {}, cuda=True)
    assert "DS_ACCELERATOR" not in env and "OMP_NUM_THREADS" not in env


def test_cli_local_execs_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    cli.main(["local", "--nproc", "2", "--", "train", "c.yaml"])
    (path, argv, env), = calls
    assert path == sys.executable and argv[-4:] == ["-m", "sora.cli", "train", "c.yaml"]


PROBE = """
import os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
x = torch.tensor([float(rank + 1)])
dist.all_reduce(x)
with open(os.path.join(sys.argv[2], f"rank{rank}.txt"), "w") as f:
    f.write(f"{rank} {world} {x.item()} {os.environ['DS_ACCELERATOR']}")
dist.destroy_process_group()
"""


def test_local_launch_two_gloo_ranks(tmp_path):
    (tmp_path / "launch_probe.py").write_text(PROBE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("DS_ACCELERATOR", None)
    argv, env = local.build_local_command(
        2, ["probe", str(tmp_path)], env, module="launch_probe", cuda=False
    )
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == f"{rank} 2 3.0 cpu"
