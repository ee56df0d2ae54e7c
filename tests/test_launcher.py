"""sora-launch: sbatch / hosts rendering (golden), validation, the requeue logic of the batch script,
the per-rank wrapper, local torchrun, a real 2-rank run. The real-Slurm test is tests/test_launcher_slurm.py.

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

from launcher import cli, hosts, local, rank, settings, slurm

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
    sbatch_extra=["#SBATCH --exclusive"], signal_seconds=300, max_restarts=5, network="infiniband",
    env={"NCCL_DEBUG": "INFO", "HF_HOME": "/scratch/hf cache"},
)
DEEPSPEED_CPU = slurm.SlurmJob(
    args=["train", "configs/demo.yaml"], nodes=2, gpus_per_node=0, nproc_per_node=2, launcher="deepspeed",
    output_dir="/scratch/sora/runs/cpu", python="/opt/sora/.venv/bin/python", network="ethernet",
)
HOSTS = [("node-a", 8), ("node-b", 8)]


def _hosts_job(**change):
    kw = dict(args=["train", "configs/dit.yaml", "run.dir=/shared/runs/x"], hostfile="/shared/hostfile",
              hosts=HOSTS, output_dir="/shared/runs/x", workdir="/shared/sora",
              setup=["source /shared/sora/.venv/bin/activate"], env={"NCCL_DEBUG": "INFO"})
    return hosts.HostsJob(**{**kw, **change})


@pytest.mark.parametrize("name,job", [("slurm_minimal", MINIMAL), ("slurm_full", FULL),
                                      ("slurm_deepspeed_cpu", DEEPSPEED_CPU),
                                      ("hosts_torchrun", _hosts_job()),
                                      ("hosts_deepspeed", _hosts_job(launcher="deepspeed"))])
def test_render_matches_golden(name, job):
    text = job.render()
    path = GOLDEN / (f"{name}.sh" if name.startswith("hosts") else f"{name}.sbatch")
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
    assert "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}" in text  # preset: the caller's value wins
    assert "export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}" in text
    assert "export NCCL_DEBUG=INFO\nexport HF_HOME='/scratch/hf cache'\n" in text  # --env: as given, last
    assert "--nnodes \"$SLURM_NNODES\" --nproc-per-node 8" in text
    assert "--rdzv-backend c10d --rdzv-endpoint \"$MASTER_ADDR:$MASTER_PORT\"" in text
    assert "-m launcher.rank --log-dir /scratch/sora/runs/dit1b/rank-logs --exit-dir \"$EXIT_DIR\"" in text
    sora = "sora.cli train configs/dit_1b_256p.yaml run.dir=/scratch/sora/runs/dit1b 'data.caption=a b' &"
    assert sora in text  # args shell-quoted
    assert "MAX_RESTARTS=5\n" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    cpu = DEEPSPEED_CPU.render()
    assert "--gpus-per-node" not in cpu.split("srun")[0] and "DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}" in cpu
    assert 'sed "s/$/ slots=2/" > "$HOSTFILE"' in cpu and "deepspeed.launcher.runner" in cpu


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
    ({"gpus_per_node": 0}, "nproc-per-node must be positive"),
    ({"max_restarts": -1}, "max-restarts must be 0 or more"),
    ({"network": "carrier-pigeon"}, "unknown network preset"),
    ({"launcher": "mpirun"}, "unknown launcher"),
    ({"env": {"A B": "1"}}, "bad environment variable"),
    ({"partition": "a b"}, "no spaces"),
])
def test_validation(change, message):
    job = slurm.SlurmJob(**{**MINIMAL.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        job.render()


def _fake_bin(tmp_path, name, body):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path.parent


def _run_script(tmp_path, srun_body, restart=0, signal_after_ready=False):
    """Run the rendered MINIMAL script with fake srun/scontrol; returns (exit code, stdout, requeued?)."""
    log = tmp_path / "log"
    log.mkdir(exist_ok=True)
    _fake_bin(tmp_path, "scontrol", f'[ "$1" = show ] && echo node1 && echo node2\n'
                                    f'[ "$1" = requeue ] && echo "$2" > {log}/requeued\nexit 0\n')
    out_dir = tmp_path / "out"
    srun_body = srun_body.replace("@EXIT_DIR@", str(out_dir / ".exit-codes"))
    bin_dir = _fake_bin(tmp_path, "srun", f"echo $$ > {log}/srun_pid\ntouch {log}/srun_started\n" + srun_body)
    job = slurm.SlurmJob(**{**MINIMAL.__dict__, "output_dir": str(out_dir)})
    script = tmp_path / "job.sbatch"
    script.write_text(job.render())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_RESTART_COUNT": str(restart),
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]"}
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        if signal_after_ready:
            deadline = time.monotonic() + 10
            while not (log / "srun_ready").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # let bash record SRUN_PID and enter `wait`
            proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=15)
    finally:
        if (log / "srun_pid").exists():
            subprocess.run(["kill", (log / "srun_pid").read_text().strip()], stderr=subprocess.DEVNULL)
        proc.kill()
    requeued = (log / "requeued").read_text() if (log / "requeued").exists() else None
    return proc.returncode, out, requeued, log


def _ranks_exit(codes, status):
    """Fake srun body: each 'rank' records its exit code where launcher.rank would, then srun exits."""
    lines = [f'echo {c} > @EXIT_DIR@/rank-{i}' for i, c in enumerate(codes)]
    return "\n".join(lines + [f"exit {status}"]) + "\n"


def test_requeue_trap_forwards_usr1_then_requeues(tmp_path):
    """USR1 to the batch script reaches srun; the ranks checkpoint and exit 75; the job requeues itself."""
    body = ("trap 'echo USR1 > $(dirname $0)/../log/srun_got; " + _ranks_exit([75, 75], 1).replace("\n", "; ")
            + "' USR1\ntouch $(dirname $0)/../log/srun_ready\nwhile :; do sleep 0.05; done\n")
    code, out, requeued, log = _run_script(tmp_path, body, signal_after_ready=True)
    assert code == 0, out
    assert (log / "srun_got").read_text() == "USR1\n"
    assert requeued == "4242\n"
    assert "master node1:" in out and "caught USR1" in out and "rank exit codes: 75" in out


@pytest.mark.parametrize("codes,status,restart,want_code,want_requeue,message", [
    ([0, 0], 0, 0, 0, False, "finished"),
    ([75, 75], 1, 0, 0, True, "requeueing job 4242"),      # preempted on its own (e.g. SIGTERM): requeue
    ([75, 1], 1, 3, 0, True, "requeueing"),               # one rank checkpointed and left, one was killed
    ([76, 75], 1, 0, 76, False, "diverged (76): not requeueing"),
    ([74, 75], 1, 0, 74, False, "storage error (74): not requeueing"),   # a full disk stays full
    ([75, 75], 1, 20, 75, False, "reached the limit 20: not requeueing"),
    ([0, 1], 1, 0, 1, False, "rank exit codes: 0 1"),     # a crash is not requeued: it would loop
    ([], 3, 0, 3, False, "srun exited with 3"),           # no rank started
])
def test_script_exit_and_requeue_decisions(tmp_path, codes, status, restart, want_code, want_requeue, message):
    code, out, requeued, _ = _run_script(tmp_path, _ranks_exit(codes, status), restart=restart)
    assert code == want_code, out
    assert (requeued is not None) == want_requeue, out
    assert message in out


def test_script_stops_a_crash_loop_before_starting(tmp_path):
    code, out, requeued, log = _run_script(tmp_path, _ranks_exit([0], 0), restart=21)
    assert code == 1 and requeued is None and not (log / "srun_started").exists()
    assert "more than the limit 20" in out


RANK_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: print("child got USR1", flush=True))
print("child", os.environ["RANK"], sys.argv[1:], flush=True)
open(os.environ["READY"], "w").close()
time.sleep(float(sys.argv[1]))
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.parametrize("forward", [False, True])
def test_rank_wrapper_logs_exit_code_and_signals(tmp_path, forward):
    """launcher.rank: one log per rank, the exit code recorded, USR1 passed on only when asked, TERM always."""
    (tmp_path / "rank_child.py").write_text(RANK_CHILD)
    env = {**os.environ, "RANK": "3", "READY": str(tmp_path / "ready"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "launcher.rank", "--log-dir", str(tmp_path / "logs"), "--exit-dir",
            str(tmp_path / "codes")] + (["--forward-usr1"] if forward else []) + ["rank_child", "30", "75"]
    proc = subprocess.Popen(argv, env=env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # the wrapper never dies of it
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # passed on: the child dies of it (no handler) -> 128 + 15
    assert proc.wait(timeout=30) == 143
    log = (tmp_path / "logs" / "rank-3.log").read_text()
    assert "rank 3/" in log and "child 3 ['30', '75']" in log and "==== rank 3 exited with 143" in log
    assert ("child got USR1" in log) == forward
    assert (tmp_path / "codes" / "rank-3").read_text() == "143\n"
    assert rank.exit_status(-15) == 143 and rank.exit_status(75) == 75


SLURM_ARGV = ["slurm", "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path, with a valid sora config c.yaml there (the launcher checks it before submitting)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("run: {dir: runs/c}\n")
    return tmp_path


def test_cli_dry_run_prints_and_submits_nothing(in_tmp, capsys):
    tmp_path = in_tmp
    assert cli.main(SLURM_ARGV + ["--dry-run", "train", "c.yaml", "run.dir=runs/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash\n")
    assert f"#SBATCH --output={tmp_path}/runs/x/slurm-%j.out" in out  # run.dir, made absolute
    assert "    sora.cli train c.yaml run.dir=runs/x --dry-run &" in out  # after the subcommand: sora's
    assert not (tmp_path / "runs").exists()


def test_cli_submit_with_fake_sbatch(in_tmp, monkeypatch, capsys):
    tmp_path = in_tmp
    bin_dir = _fake_bin(tmp_path, "sbatch", f'echo "$@" > {tmp_path}/sbatch_args\necho "123456;cluster1"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out_dir = tmp_path / "out"
    assert cli.main(SLURM_ARGV + ["--output-dir", str(out_dir), "train", "c.yaml"]) == 0
    assert capsys.readouterr().out == "123456\n"
    assert (out_dir / "slurm_job_id").read_text() == "123456\n"
    assert (out_dir / "rank-logs").is_dir()
    assert (tmp_path / "sbatch_args").read_text() == f"--parsable {out_dir}/job.sbatch\n"
    assert (out_dir / "job.sbatch").read_text().startswith("#!/bin/bash\n")


def test_cli_without_sbatch_is_a_clear_error(in_tmp, monkeypatch, capsys):
    tmp_path = in_tmp
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert cli.main(SLURM_ARGV + ["--output-dir", str(tmp_path / "o"), "train", "c.yaml"]) == 1
    assert "sbatch not found on PATH" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "required"),
    (SLURM_ARGV[:-2] + ["--time", "25:99", "--module", "m", "train"], "bad time limit '25:99'"),
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


def test_cli_refuses_unknown_partition_before_submitting(in_tmp, monkeypatch):
    tmp_path = in_tmp
    bin_dir = _fake_bin(tmp_path, "sinfo", 'echo "gpu"; echo "cpu"\n')
    _fake_bin(tmp_path, "sbatch", f"touch {tmp_path}/submitted\necho 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(SystemExit) as exc:
        cli.main(SLURM_ARGV + ["--partition", "gpuu", "--output-dir", str(tmp_path / "o"), "train", "c.yaml"])
    assert exc.value.code == 2
    assert not (tmp_path / "submitted").exists() and not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"unknown partition 'gpuu' \(this cluster has: cpu, gpu\)"):
        slurm.check_partition("gpuu")
    slurm.check_partition("gpu")


def test_cli_refuses_missing_or_invalid_config(in_tmp, capsys):
    tmp_path = in_tmp
    for argv, message in [
        (["train", "nope.yaml"], "config file 'nope.yaml' not found"),
        (["train"], "`train` needs a config file"),
        (["train", "c.yaml", "model.bogus=1"], "unknown config key 'model.bogus'"),
    ]:
        (tmp_path / "c.yaml").write_text("run: {dir: runs/x}\n")
        with pytest.raises(SystemExit):
            cli.main(SLURM_ARGV + ["--dry-run"] + argv)
        err = capsys.readouterr().err
        assert message in err, err


def test_cli_launcher_section_of_the_config(tmp_path, monkeypatch, capsys):
    """Settings from the config's `launcher:` section, overridden by flags and launcher.KEY=VALUE."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "run: {dir: runs/big}\n"
        "launcher:\n  nodes: 4\n  gpus_per_node: 8\n  partition: gpu\n  time: '1-00:00:00'\n"
        "  setup: [module load cuda]\n  env: {NCCL_DEBUG: INFO}\n  max_restarts: 3\n")
    assert cli.main(["slurm", "--dry-run", "--partition", "h100", "--setup", "echo hi",
                     "train", "c.yaml", "launcher.nodes=2"]) == 0
    out = capsys.readouterr().out
    for line in ["#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=h100",
                 "#SBATCH --time=1-00:00:00", f"#SBATCH --output={tmp_path}/runs/big/slurm-%j.out",
                 "module load cuda\necho hi\n", "export NCCL_DEBUG=INFO", "MAX_RESTARTS=3"]:
        assert line in out, line
    assert settings.launcher_section(["train", "c.yaml", "launcher.time=10:00"])["time"] == "10:00"
    (tmp_path / "bad.yaml").write_text("launcher:\n  nodez: 2\n")
    with pytest.raises(ValueError, match="unknown config key 'launcher.nodez'"):
        settings.launcher_section(["train", "bad.yaml"])
    (tmp_path / "bad.yaml").write_text("launcher:\n  nodes: two\n")
    with pytest.raises(ValueError, match="'launcher.nodes': 'two' is not an integer"):
        settings.launcher_section(["train", "bad.yaml"])
    with pytest.raises(SystemExit):
        cli.main(["slurm", "--dry-run", "train", "bad.yaml"])


def test_cli_nodes_required_somewhere(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        cli.main(["slurm", "--dry-run", "--module", "m", "train", "x"])
    assert "--nodes is required (as a flag or in the config's launcher: section)" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("node-a slots=8\nnode-b slot=8\n", "line 2: expected 'HOSTNAME slots=N', got 'node-b slot=8'"),
    ("# comment\n\nnode-a slots=0\n", "line 3: slots must be a positive integer, got '0'"),
    ("node-a slots=8\nnode-a slots=8\n", "line 2: host 'node-a' already listed on line 1"),
    ("node-a slots=x8\n", "line 1: slots must be a positive integer"),
    ("# nothing\n", "lists no hosts"),
])
def test_hostfile_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        hosts.parse_hostfile(path)


def test_cli_hosts_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hostfile").write_text("# two nodes\nnode-a slots=4  # first\nnode-b slots=4\n")
    argv = ["hosts", "--hostfile", "hostfile", "--dry-run", "--module", "probe", "run", "x"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("ssh -tt node-") == 2 and "--rdzv-endpoint node-a:29500" in out
    assert "--nnodes 2 --nproc-per-node 4" in out and "launcher.rank --forward-usr1" in out
    assert not (tmp_path / "runs").exists()
    subprocess.run(["bash", "-n"], input=out, text=True, check=True)
    (tmp_path / "hostfile").write_text("node-a slots=4\nnode-b\n")
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "hostfile" in capsys.readouterr().err
    with pytest.raises(ValueError, match="same slots"):
        _hosts_job(hosts=[("a", 8), ("b", 4)]).render()


def test_status_cancel_logs_with_fake_slurm(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / "rank-logs").mkdir(parents=True)
    (run / "slurm_job_id").write_text("77\n")
    (run / "slurm-77.out").write_text("line1\nline2\nfinished\n")
    (run / "rank-logs" / "rank-1.log").write_text("rank one\n")
    (run / "metrics.jsonl").write_text('{"step": 9, "loss": 0.5}\n')
    bin_dir = _fake_bin(tmp_path, "scontrol",
                        'echo "JobId=77 JobName=sora-train JobState=RUNNING Reason=None Restarts=2 '
                        'ExitCode=0:0 RunTime=00:01:00 TimeLimit=00:10:00 NumNodes=1 NodeList=vm"\n')
    _fake_bin(tmp_path, "scancel", f'echo "$@" > {tmp_path}/scancel_args\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert cli.main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "job       77" in out and "state     RUNNING" in out and "restarts  2" in out
    assert "last logged step   9  loss 0.5" in out
    assert cli.main(["cancel", str(run)]) == 0
    assert (tmp_path / "scancel_args").read_text() == "77\n" and "cancelled job 77" in capsys.readouterr().out
    assert cli.main(["logs", str(run), "-n", "2"]) == 0
    assert capsys.readouterr().out == "line2\nfinished\n"
    assert cli.main(["logs", str(run), "--rank", "1"]) == 0
    assert capsys.readouterr().out == "rank one\n"
    assert cli.main(["logs", str(run), "--list"]) == 0
    assert capsys.readouterr().out.split() == [str(run / "slurm-77.out"), str(run / "rank-logs" / "rank-1.log")]
    with pytest.raises(SystemExit):
        cli.main(["status", str(tmp_path)])
    assert "no Slurm job recorded in" in capsys.readouterr().err


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
