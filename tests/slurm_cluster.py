"""A throwaway single-node Slurm cluster (munged + slurmctld + slurmd) under one temporary directory.

Used by tests/test_launcher_slurm.py; also runnable by hand to poke at it:

    python tests/slurm_cluster.py          # starts it, prints `export SLURM_CONF=...`, waits for Ctrl-C

Everything it needs lives under the directory: config, munge key and socket, state, spool, logs, pids.
No systemd, no cgroups (`ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`); ports are free
ones, so it does not collide with another Slurm on the machine. Needs root (slurmd runs jobs as the
submitting user and must be able to setuid) and Debian's slurmctld/slurmd/munge packages, which
`scripts/install_slurm.sh` installs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINARIES = ("sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "mungekey")


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)


def unavailable_reason() -> str | None:
    """Why a Slurm cluster cannot be started here, or None. Missing binaries on a root machine with
    apt-get is NOT a reason: `make test` installs them, so that case must fail, not skip."""
    missing = [b for b in BINARIES if _which(b) is None]
    if not missing:
        if os.geteuid() != 0:
            return "not root: slurmd must run as root to start jobs"
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"Slurm is not installed ({', '.join(missing)} missing) and this machine cannot install it "
                f"(needs root and apt-get; see scripts/install_slurm.sh)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: str | Path | None = None, cpus: int = 2, partition: str = "debug"):
        self.root = Path(root or tempfile.mkdtemp(prefix="sora-slurm-"))
        self.cpus = cpus
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands (sbatch, squeue, ...) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        for d in ("state", "spool", "log", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True)
        os.chmod(key, 0o600)
        r = self.root
        self.conf.write_text(f"""\
# Single-node test cluster written by tests/slurm_cluster.py
ClusterName=soratest
SlurmctldHost={self.host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again after 10 s instead of the default 120 s
AuthInfo=socket={r}/munge/munge.socket,cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/slurmd-%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.host} CPUs={self.cpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self._write_config()
        m = self.root / "munge"
        self._start("munged", [_which("munged"), "--foreground", "--force", f"--socket={m}/munge.socket",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged socket")
        self._start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_ready, timeout, "the node to become idle")
        return self

    def _node_ready(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}:\n"
                                       + self.logs_tail())
            if ok():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n" + self.logs_tail())

    def logs_tail(self, n: int = 30) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, wait for them to go, stop the daemons we started, remove the directory."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                r = subprocess.run(["squeue", "-h", "-t", "RUNNING,COMPLETING"], env=self.env,
                                   capture_output=True, text=True)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    cluster = SlurmCluster(sys.argv[1] if len(sys.argv) > 1 else None).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # after start: children would inherit the mask
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        cluster.stop()
