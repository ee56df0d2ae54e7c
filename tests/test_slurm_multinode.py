"""`sora-launch slurm --nodes 2` on a real multi-node Slurm: 3 emulated nodes, each in its own network
namespace with its own hostname and address (tests/slurm_cluster.py), the filesystem shared as on a
cluster's scratch. Every job goes through `sora-launch slurm` and `sora train configs/demo.yaml` (or
`sora preprocess`) at a tiny size; ranks find each other through torchrun's c10d rendezvous on the
first node of the job, and every collective crosses the emulated network.

1. ZeRO-3 over 2 nodes x 2 ranks logs the same loss and grad norm per step as 4 ranks on one machine.
2. parallel.sp=2 with one rank per node (every Ulysses all-to-all crosses nodes) = sp=1 on one rank.
3. USR1 -> the ranks on both nodes checkpoint, exit 75 -> requeue -> resume -> finish, every step once;
   `sora-launch status` and `logs` show both nodes.
4. A node lost mid-run (link down, then everything on it killed): the job ends within
   parallel.timeout_s (+ the batch script's check) naming the node; the newest checkpoint is complete
   and a resubmission without that node resumes from it and finishes.
5. `sora preprocess` over 2 nodes: each rank (one per node) writes its own shards, none twice.

Skips (saying why) only where Slurm or network namespaces are unavailable (not root, no apt-get, no
CAP_NET_ADMIN); with root and apt-get, `make test` installs what is missing and these must pass.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launcher import cli
from sora.config import load_config, save_config
from sora.data.synth import synthesize
from sora.train.artifacts import build_vae, save_weights
from tests.slurm_cluster import (REGISTRY, Layout, clean_leftovers, cluster_for_tests, finished, job, netns_pids,
                                 steps, wait_for)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "configs" / "demo.yaml")
TINY = ["vae.channels=8", "model.depth=2", "model.width=48", "model.heads=4", "data.tokens_per_batch=600",
        "data.shuffle_buffer=4", "optim.warmup=2", "run.log_every=1"]
TIMEOUT_S = 20  # parallel.timeout_s of the node-loss test: how long survivors wait for a silent peer


@pytest.fixture(scope="module")
def cluster():
    # SlurmdTimeout 300 s, Slurm's default: a lost node must be noticed by the job, not by Slurm.
    with cluster_for_tests(nodes=3, slurmd_timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """16 clips in 4 shards of 4 (+1 held-out shard) and a random stage-1 VAE with 8 channels (made here:
    what these tests compare does not need a trained one, and this saves a DeepSpeed start)."""
    root = tmp_path_factory.mktemp("multinode")
    synthesize(root / "data", clips=16, heldout_clips=2, seed=5, shard_size=4)
    vae_cfg = load_config(str(ROOT / "configs" / "demo-vae.yaml"), [f"run.dir={root / 'vae'}", "vae.channels=8"])
    torch.manual_seed(0)
    save_config(vae_cfg, root / "vae" / "config.yaml")
    save_weights(build_vae(vae_cfg).state_dict(), root / "vae" / "vae.safetensors")
    return root


def sora(*args: str, nproc: int = 0) -> None:
    """`sora ARGS` on this machine; with nproc, `sora-launch local --nproc N ARGS` (the one-machine references)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    module = ["-m", "launcher.cli", "local", "--nproc", str(nproc)] if nproc else ["-m", "sora.cli"]
    r = subprocess.run([sys.executable, *module, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(module + list(args[:1]))} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}"


def train_args(world: Path, run: Path, steps_: int, *overrides: str) -> list[str]:
    return ["train", DEMO, f"data.path={world / 'data'}", f"vae.run={world / 'vae'}", f"run.dir={run}",
            f"train.steps={steps_}", *TINY, *overrides]


def launch(sora_args: list[str], nodes: int = 2, per_node: int = 1, extra: tuple[str, ...] = (),
           output_dir: Path | None = None) -> str:
    """Submit through `sora-launch slurm`; the job id it recorded in the run (or output) directory."""
    argv = ["slurm", "--nodes", str(nodes), "--gpus-per-node", "0", "--nproc-per-node", str(per_node),
            "--partition", "debug", "--time", "10:00", "--signal-seconds", "60", "--python", sys.executable,
            "--env", f"PYTHONPATH={ROOT}", "--env", "OMP_NUM_THREADS=1", *extra]
    if output_dir is not None:
        argv += ["--output-dir", str(output_dir)]
    assert cli.main([*argv, "--", *sora_args]) == 0
    out = output_dir or Path(next(a.split("=", 1)[1] for a in sora_args if a.startswith("run.dir=")))
    return (out / "slurm_job_id").read_text().strip()


def hostnames(nodelist: str) -> list[str]:
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                          check=True).stdout.split()


_HEADER = re.compile(r"^==== \S+ \S+ rank (\d+)/(\d+) \(local (\d+)\) on (\S+), job (\d+) restart (\d+):", re.M)


def rank_hosts(run: Path, job_id: str, restart: int = 0) -> dict[int, str]:
    """RANK -> the host it ran on in that start, from launcher.rank's header lines in the rank logs."""
    out = {}
    for path in (run / "rank-logs").glob("rank-*.log"):
        for rank, _, _, host, job_, restart_ in _HEADER.findall(path.read_text(errors="replace")):
            if job_ == job_id and int(restart_) == restart:
                out[int(rank)] = host
    return out


def until_done(job_id: str, run: Path, cluster, timeout: float = 300) -> str:
    return wait_for(f"job {job_id} to end", lambda: finished(job_id), timeout, cluster, run)


def assert_same_curve(one: list[dict], other: list[dict], n: int, rel: float = 1e-5) -> float:
    """Same tokens, loss and grad norm per step (within `rel`); returns the largest relative difference."""
    assert [r["step"] for r in one] == [r["step"] for r in other] == list(range(n))
    worst = 0.0
    for a, b in zip(one, other):
        assert a["tokens"] == b["tokens"], (a["step"], a["tokens"], b["tokens"])
        for key in ("loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= rel * abs(a[key]), (a["step"], key, a[key], b[key])
            worst = max(worst, abs(a[key] - b[key]) / abs(a[key]))
    return worst


def test_leftovers_of_a_crashed_cluster_are_torn_down(cluster):
    """A cluster whose owner died without stopping it (SIGKILL) leaves namespaces, a bridge and daemons
    behind; clean_leftovers(), which every multi-node start runs first, removes all of that, and nothing
    of a cluster whose owner lives (this module's)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "slurm_cluster.py"), "up", "--nodes", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("export SLURM_CONF="), line + proc.stderr.read()
        index = next(int(r.stem) for r in REGISTRY.glob("*.json") if json.loads(r.read_text())["owner"] == proc.pid)
        root = Path(line.split("=", 1)[1].strip()).parent
    finally:
        proc.kill()  # the owner dies; its daemons (own sessions) and namespaces stay
        proc.wait()
    crashed = Layout(index, 1)
    try:
        pids = [pid for host in crashed.hosts for pid in netns_pids(crashed.namespace(host))]
        assert len(pids) >= 3 and root.is_dir()  # munged, slurmctld, slurmd: still running

        assert str(index) in clean_leftovers()
        assert not [pid for pid in pids if alive(pid)]
        assert not [h for h in crashed.hosts if Path(f"/run/netns/{crashed.namespace(h)}").exists()]
        assert not Path(f"/sys/class/net/{crashed.bridge}").exists() and not root.exists()
        assert not (REGISTRY / f"{index}.json").exists()
    finally:
        clean_leftovers()  # whatever failed above, leave nothing behind
    assert (REGISTRY / f"{cluster.layout.index}.json").exists()  # the live one is untouched
    assert set(cluster.node_states().values()) == {"idle"}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def test_zero3_over_two_nodes_matches_one_machine(cluster, world):
    """2 nodes x 2 ranks (torchrun rendezvous on the first node, ZeRO-3 over all 4 ranks) log the same
    loss and grad norm per step as the same 4 ranks on one machine, i.e. the same global batch."""
    t0 = time.monotonic()
    run = world / "zero3-2x2"
    job_id = launch(train_args(world, run, 5), per_node=2)
    assert until_done(job_id, run, cluster) == "COMPLETED"
    hosts = rank_hosts(run, job_id)
    assert sorted(hosts) == [0, 1, 2, 3] and len(set(hosts.values())) == 2, hosts  # 2 ranks on each of 2 nodes
    assert sorted(set(hosts.values())) == hostnames(job(job_id)["NodeList"])
    script = (run / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and '--nnodes "$SLURM_NNODES" --nproc-per-node 2' in script
    t_slurm = time.monotonic() - t0

    sora(*train_args(world, world / "zero3-local4", 5), nproc=4)
    worst = assert_same_curve(steps(world / "zero3-local4"), steps(run), 5)
    print(f"\nZeRO-3 2 nodes x 2 ranks: {t_slurm:.0f} s, 4 local ranks: {time.monotonic() - t0 - t_slurm:.0f} s, "
          f"largest relative difference {worst:.1e}", file=sys.stderr)


def test_sequence_parallel_across_nodes_matches_one_rank(cluster, world):
    """parallel.sp=2 with one rank per node: every all-to-all of the DiT crosses nodes; the same loss
    and grad norm per step as sp=1 on one rank holding the whole pack."""
    t0 = time.monotonic()
    run = world / "sp2-2x1"
    job_id = launch(train_args(world, run, 5, "parallel.sp=2", "parallel.check_packs=true"))
    assert until_done(job_id, run, cluster) == "COMPLETED"
    assert len(set(rank_hosts(run, job_id).values())) == 2
    t_slurm = time.monotonic() - t0
    sora(*train_args(world, world / "sp1", 5))
    worst = assert_same_curve(steps(world / "sp1"), steps(run), 5)
    print(f"\nsp=2 across 2 nodes: {t_slurm:.0f} s, 1 rank: {time.monotonic() - t0 - t_slurm:.0f} s, "
          f"largest relative difference {worst:.1e}", file=sys.stderr)


def test_preempt_checkpoint_requeue_resume_across_nodes(cluster, world, capsys):
    """USR1 to the batch script -> srun -> torchrun and the trainer on both nodes: every rank takes
    part in the checkpoint, exits 75 -> requeued -> resumed from that checkpoint (on whichever nodes
    Slurm gives) -> finished, every step logged once; status and logs show both nodes."""
    t0 = time.monotonic()
    n = 16
    run = world / "preempt"
    job_id = launch(train_args(world, run, n, "run.save_every=100"))
    wait_for("step 4 of the first start", lambda: len(steps(run)) >= 4, 300, cluster, run)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)  # as Slurm before a time limit
    wait_for("the requeue", lambda: job(job_id).get("Restarts") == "1", 120, cluster, run)
    preempted_at = steps(run)[-1]["step"]
    assert preempted_at < n - 1, "the first start finished before the signal: the test proves nothing"
    first_hosts = rank_hosts(run, job_id, 0)
    assert until_done(job_id, run, cluster) == "COMPLETED"

    assert [r["step"] for r in steps(run)] == list(range(n))  # every step exactly once across the restart
    assert len(set(first_hosts.values())) == 2 and len(set(rank_hosts(run, job_id, 1).values())) == 2
    ckpt = run / "checkpoints" / f"step{preempted_at:08d}"
    assert sorted(p.name for p in ckpt.glob("ema_rank*")) == ["ema_rank00000.safetensors", "ema_rank00001.safetensors"]
    for rank, host in first_hosts.items():  # each rank, on its own node, checkpointed and exited 75
        log = (run / "rank-logs" / f"rank-{rank}.log").read_text()
        assert f"checkpointed step {preempted_at} after SIGUSR1" in log and "(exit 75)" in log, (host, log[-2000:])
        assert log.count(f"==== rank {rank} exited with 75") == 1 and log.count(f"==== rank {rank} exited with 0") == 1
    log0 = (run / "rank-logs" / "rank-0.log").read_text()
    assert f"resumed from {run / 'checkpoints'} at step {preempted_at + 1} " in log0
    batch = (run / f"slurm-{job_id}.out").read_text()
    assert "caught USR1" in batch and "rank exit codes: 75" in batch and f"requeueing job {job_id}" in batch
    assert "restart 1/20: 2 node(s)" in batch and "finished" in batch

    capsys.readouterr()
    assert cli.main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "state     COMPLETED" in out and "restarts  1" in out and f"last logged step   {n - 1}" in out
    nodes = re.search(r"^nodes     2 (\S+)$", out, re.M)
    assert nodes and hostnames(nodes.group(1)) == sorted(set(rank_hosts(run, job_id, 1).values())), out
    assert cli.main(["logs", str(run), "--list"]) == 0
    listed = capsys.readouterr().out
    for host in set(first_hosts.values()):  # srun's per-node output, named by host
        assert f"rank-logs/{job_id}-{host}.log" in listed, listed
    assert cli.main(["logs", str(run), "--rank", "1", "-n", "0"]) == 0
    assert f"on {rank_hosts(run, job_id, 1)[1]}, job {job_id} restart 1" in capsys.readouterr().out
    print(f"\npreempt/requeue/resume across nodes: {time.monotonic() - t0:.0f} s (preempted at step {preempted_at})",
          file=sys.stderr)


def test_preprocess_spread_over_two_nodes(cluster, world):
    """`sora preprocess` with one rank per node: rank r takes shards r::2; both nodes write theirs, every
    raw shard becomes exactly one latent shard."""
    t0 = time.monotonic()
    out, logs = world / "latents", world / "preprocess-job"
    raw = sorted(p.name for p in (world / "data").glob("*.tar"))
    assert len(raw) == 5
    job_id = launch(["preprocess", DEMO, f"data.path={world / 'data'}", f"vae.run={world / 'vae'}", "vae.channels=8",
                     "--out", str(out)], output_dir=logs)
    assert until_done(job_id, logs, cluster) == "COMPLETED"
    hosts = rank_hosts(logs, job_id)
    assert len(set(hosts.values())) == 2, hosts
    written = {}
    for rank in (0, 1):
        summary = re.search(rf"rank {rank}/2: (\d+) shards written",
                            (logs / "rank-logs" / f"rank-{rank}.log").read_text())
        written[rank] = int(summary.group(1))
    assert written == {0: len(raw[0::2]), 1: len(raw[1::2])}  # 3 and 2: each its own share, from its own node
    assert sorted(p.name for p in out.glob("*.tar")) == raw and not list(out.glob("*.tmp"))
    assert sum(written.values()) == len(raw)  # none written twice
    print(f"\npreprocess over 2 nodes: {time.monotonic() - t0:.0f} s", file=sys.stderr)


def test_lost_node_ends_the_job_and_a_resubmission_resumes(cluster, world):
    """The second node of a running job is lost (link down, everything on it killed, as in a crash):
    the survivor's collective times out (parallel.timeout_s), the batch script finds the node's slurmd
    silent and ends the job naming it, instead of waiting for Slurm's node timeout; the newest checkpoint
    is complete; resubmitted without that node, the run resumes from it and finishes on the others."""
    n = 24
    run = world / "lost"
    args = train_args(world, run, n, "run.save_every=3", f"parallel.timeout_s={TIMEOUT_S}")
    job_id = launch(args)
    wait_for("step 5 (after the checkpoint of step 2)", lambda: len(steps(run)) >= 6, 300, cluster, run)
    lost = hostnames(job(job_id)["NodeList"])[1]  # not the first node: that one runs the batch script
    on_lost = " ".join(str(r) for r, host in sorted(rank_hosts(run, job_id).items()) if host == lost)
    newest = (run / "checkpoints" / "newest").read_text().strip()
    try:
        cluster.kill_node(lost)
        killed = time.monotonic()
        batch_log = run / f"slurm-{job_id}.out"
        wait_for("the job to give up on the lost node", lambda: job(job_id).get("ExitCode") == "1:0", 180, cluster, run)
        ended = time.monotonic() - killed
        # The job ended itself (Slurm would only notice at SlurmdTimeout, 300 s, and then requeue it, killing
        # the batch script before it could say this): parallel.timeout_s, then the script's 5 s + probe.
        text = batch_log.read_text()
        assert f"lost node(s) {lost}: 1 rank(s) without an exit code ({on_lost}); not requeueing" in text, text
        assert f"sbatch --exclude={lost} {run / 'job.sbatch'}" in text
        assert steps(run)[-1]["step"] < n - 1, "the job finished before the node was lost: the test proves nothing"

        tag = (run / "checkpoints" / "newest").read_text().strip()
        assert int(tag.removeprefix("step")) >= int(newest.removeprefix("step"))  # never moved back
        ckpt = run / "checkpoints" / tag
        for rank in (0, 1):  # a complete save: every rank's part is there
            assert (ckpt / f"ema_rank{rank:05d}.safetensors").is_file()
            assert (ckpt / f"state_rank{rank:05d}.json").is_file()
        resumed_at = int(tag.removeprefix("step")) + 1

        again = launch(args, extra=("--exclude", lost))  # the same command, without the lost node
        assert f"#SBATCH --exclude={lost}\n" in (run / "job.sbatch").read_text()
        assert again != job_id and until_done(again, run, cluster) == "COMPLETED"
        assert lost not in rank_hosts(run, again).values() and len(set(rank_hosts(run, again).values())) == 2
        log0 = (run / "rank-logs" / "rank-0.log").read_text()
        assert f"resumed from {run / 'checkpoints'} at step {resumed_at} " in log0
        assert [r["step"] for r in steps(run)] == list(range(n))  # the lost start's later steps logged once
        assert json.loads((run / "exit_status.json").read_text())["code"] == 0
        print(f"\nlost node: the job ended {ended:.0f} s after (parallel.timeout_s={TIMEOUT_S}); "
              f"resumed at step {resumed_at}", file=sys.stderr)
    finally:
        cluster.revive_node(lost)
