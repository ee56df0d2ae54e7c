"""A throwaway Slurm cluster (munged + slurmctld + slurmd) under one temporary directory.

Two shapes:

- `SlurmCluster()`: one node, the daemons on this machine's own network (tests/test_launcher_slurm.py).
- `SlurmCluster(nodes=N)`: N emulated nodes (tests/test_slurm_multinode.py). The controller (slurmctld
  and munged) and every node (one slurmd) run in their own network namespace, with their own hostname
  (a UTS namespace) and address on a bridge this class creates: 10.213.K.2 the controller `ctl`,
  10.213.K.11.. the nodes `node1`..`nodeN` (K is the first free instance number; nothing else uses the
  range and nothing is routed out of it). Names resolve through the cluster's own hosts file, mounted
  over /etc/hosts for the cluster's processes only (each runs in a private mount namespace). The
  filesystem is shared, like an NFS scratch on a real cluster; so is munge's key (one munged, its
  socket in the cluster directory).
  `kill_node(name)` takes a node's link down and SIGKILLs everything in it (a node lost without a
  goodbye: its peers see silence, not a closed connection); `revive_node(name)` brings it back.

By hand:

    python tests/slurm_cluster.py up [--nodes 2]   # starts it, prints `export SLURM_CONF=...`, waits for Ctrl-C
    python tests/slurm_cluster.py kill-node node2  # in another shell: lose a node of the running cluster
    python tests/slurm_cluster.py revive-node node2
    python tests/slurm_cluster.py clean            # tear down what a crashed earlier run left behind

Everything it needs lives under the directory: config, munge key and socket, state, spool, logs, pids.
No systemd, no cgroups (`ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`). Everything it
starts it stops, namespaces and bridge included (`stop()`, also on a failed start); each multi-node
instance is recorded in /run/sora-slurm-clusters/K.json with its owner's pid, so a later start tears
down the leftovers of an owner that died without stopping. Needs root (slurmd runs jobs as the
submitting user and must be able to setuid; namespaces need CAP_NET_ADMIN) and Debian's
slurmctld/slurmd/munge/iproute2 packages, which `scripts/install_slurm.sh` installs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
NETNS_BINARIES = ("ip", "nsenter", "unshare", "mount")
REGISTRY = Path("/run/sora-slurm-clusters")  # one K.json per multi-node instance: what to tear down
SUBNET = "10.213"                            # instance K uses 10.213.K.0/24, only inside its own bridge
CONTROLLER = "ctl"


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def unavailable_reason(nodes: int | None = None) -> str | None:
    """Why a Slurm cluster cannot be started here, or None. Missing binaries on a root machine with
    apt-get is NOT a reason: `make test` installs them, so that case must fail, not skip."""
    wanted = BINARIES + (NETNS_BINARIES if nodes else ())
    missing = [b for b in wanted if _which(b) is None]
    if not missing:
        if os.geteuid() != 0:
            return "not root: slurmd must run as root to start jobs"
        return _netns_unavailable() if nodes else None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"Slurm is not installed ({', '.join(missing)} missing) and this machine cannot install it "
                f"(needs root and apt-get; see scripts/install_slurm.sh)")
    return None


def _netns_unavailable() -> str | None:
    """None if this machine lets us make a network namespace (root in a container may not)."""
    probe = f"sora-probe-{os.getpid()}"
    r = _run(_which("ip"), "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace here (`ip netns add` says: {r.stderr.strip()})"
    _run(_which("ip"), "netns", "del", probe, check=False)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def netns_pids(namespace: str) -> list[int]:
    r = _run(_which("ip"), "netns", "pids", namespace, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def kill_namespace_processes(namespace: str, timeout: float = 10) -> None:
    """SIGKILL every process in the namespace until none is left (a dying slurmstepd may fork)."""
    deadline = time.monotonic() + timeout
    while pids := netns_pids(namespace):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in network namespace {namespace} do not die")
        time.sleep(0.1)


class Layout:
    """Names and addresses of multi-node instance K: all derived from K, so a record of K is enough
    to find (and tear down) everything an instance made."""

    def __init__(self, index: int, nodes: int):
        self.index, self.nodes = index, nodes
        self.bridge = f"sorabr{index}"
        self.host_addr = f"{SUBNET}.{index}.1"
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        self.addr = {CONTROLLER: f"{SUBNET}.{index}.2",
                     **{n: f"{SUBNET}.{index}.{10 + i}" for i, n in enumerate(self.node_names, 1)}}

    @property
    def hosts(self) -> list[str]:
        return [CONTROLLER, *self.node_names]

    def namespace(self, host: str) -> str:
        return f"sora{self.index}-{host}"

    def veth(self, host: str) -> str:  # the bridge's end of the host's link (<= 15 characters)
        return f"sora{self.index}{'c' if host == CONTROLLER else 'n' + host.removeprefix('node')}"

    def lose(self, node: str) -> None:
        """The node's link down first (its peers get no connection reset, only silence, as after a
        crash or power cut), then SIGKILL everything on it, slurmd included."""
        _run(_which("ip"), "link", "set", self.veth(node), "down")
        kill_namespace_processes(self.namespace(node))

    def teardown(self) -> None:
        """Kill every process in the instance's namespaces, delete them, their links and the bridge.
        Safe to repeat, and on a half-made instance."""
        ip = _which("ip")
        for host in reversed(self.hosts):  # nodes first: their jobs, then the controller
            ns = self.namespace(host)
            if Path(f"/run/netns/{ns}").exists():
                kill_namespace_processes(ns)
                _run(ip, "netns", "del", ns, check=False)
            _run(ip, "link", "del", self.veth(host), check=False)
        _run(ip, "link", "del", self.bridge, check=False)


def _claim_instance(nodes: int, root: Path) -> Layout:
    """Reserve the first free instance number: its record is created (O_EXCL) before anything exists."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    clean_leftovers()
    used = _run(_which("ip"), "-4", "-o", "addr", check=False).stdout
    for index in range(1, 255):
        if f" {SUBNET}.{index}." in used or Path(f"/sys/class/net/sorabr{index}").exists():
            continue  # in use on this machine, by something of ours or not
        try:
            fd = os.open(REGISTRY / f"{index}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"owner": os.getpid(), "owner_start": _start_time(os.getpid()), "nodes": nodes,
                       "root": str(root)}, f)
        return Layout(index, nodes)
    raise RuntimeError(f"no free instance number in {REGISTRY} (254 clusters running?)")


def clean_leftovers() -> list[str]:
    """Tear down every recorded instance whose owner is gone (a crashed or killed earlier run)."""
    cleaned = []
    for record in sorted(REGISTRY.glob("*.json")) if REGISTRY.is_dir() else []:
        try:
            info = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            info = None  # being written by its owner this very moment, or garbage
            with contextlib.suppress(OSError):
                if time.time() - record.stat().st_mtime < 60:
                    continue
        if info and _start_time(info["owner"]) == info["owner_start"]:
            continue  # its owner is alive
        index = int(record.stem)
        Layout(index, int((info or {}).get("nodes", 0)) or _recorded_nodes(index)).teardown()
        if info and info.get("root"):
            shutil.rmtree(info["root"], ignore_errors=True)
        record.unlink(missing_ok=True)
        cleaned.append(record.stem)
    return cleaned


def _recorded_nodes(index: int) -> int:
    """How many node namespaces instance `index` has (when its record is unreadable)."""
    prefix = f"sora{index}-node"
    return sum(1 for p in Path("/run/netns").glob(prefix + "*")) if Path("/run/netns").is_dir() else 0


class SlurmCluster:
    def __init__(self, root: str | Path | None = None, cpus: int = 2, partition: str = "debug",
                 nodes: int | None = None, slurmd_timeout: int = 30):
        self.root = Path(root or tempfile.mkdtemp(prefix="sora-slurm-"))
        self.cpus = cpus
        self.partition = partition
        self.nodes = nodes              # None: one node on this machine's network; N: N namespaced nodes
        self.slurmd_timeout = slurmd_timeout
        self.layout: Layout | None = None
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands (sbatch, squeue, ...) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def node_names(self) -> list[str]:
        return self.layout.node_names if self.layout else [self.host]

    def _hosts_config(self) -> str:
        if self.layout is None:
            return (f"SlurmctldHost={self.host}\n"
                    f"NodeName={self.host} CPUs={self.cpus} State=UNKNOWN\n"
                    f"PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP "
                    f"OverSubscribe=NO\n")
        lay = self.layout
        nodes = "".join(f"NodeName={n} NodeAddr={lay.addr[n]} CPUs={self.cpus} State=UNKNOWN\n"
                        for n in lay.node_names)
        return (f"SlurmctldHost={CONTROLLER}({lay.addr[CONTROLLER]})\n"
                "# the nodes all live on one machine: trust the CPU counts given here\n"
                "SlurmdParameters=config_overrides\n" + nodes +
                f"PartitionName={self.partition} Nodes={','.join(lay.node_names)} Default=YES "
                f"MaxTime=INFINITE State=UP OverSubscribe=NO\n")

    def _write_config(self) -> None:
        for d in ("state", "spool", "log", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True)
        os.chmod(key, 0o600)
        r = self.root
        shape = f"{self.nodes} nodes in network namespaces" if self.layout else "Single-node"
        # Multi-node: every node has its own address, so all slurmds share one port.
        self.conf.write_text(f"""\
# {shape} test cluster written by tests/slurm_cluster.py
ClusterName=soratest
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
SlurmdLogFile={r}/log/slurmd-%n.log
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
SlurmdTimeout={self.slurmd_timeout}
{self._hosts_config()}""")

    # ---- namespaces ---------------------------------------------------------------------------------

    def _make_network(self) -> None:
        lay, ip = self.layout, _which("ip")
        _run(ip, "link", "add", lay.bridge, "type", "bridge")
        _run(ip, "addr", "add", f"{lay.host_addr}/24", "dev", lay.bridge)
        _run(ip, "link", "set", lay.bridge, "up")
        # The v4-mapped lines answer reverse lookups of peers seen on dual-stack sockets (TCPStore's), as a
        # cluster's DNS would; getaddrinfo still gives the plain IPv4 addresses.
        (self.root / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
            f"{lay.addr[h]} {h}\n::ffff:{lay.addr[h]} {h}\n" for h in lay.hosts))
        for host in lay.hosts:
            ns = lay.namespace(host)
            _run(ip, "netns", "add", ns)
            _run(ip, "link", "add", lay.veth(host), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run(ip, "link", "set", lay.veth(host), "master", lay.bridge, "up")
            for argv in (["addr", "add", f"{lay.addr[host]}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                         ["link", "set", "lo", "up"]):
                _run(ip, "netns", "exec", ns, ip, *argv)

    def _on_host(self, host: str, argv: list[str]) -> list[str]:
        """argv run on `host`: in its network namespace, with its hostname, and its hosts file over
        /etc/hosts (private mount and UTS namespaces; /sys stays the machine's, cgroups included, which
        slurmd wants). Exec all the way down: the Popen's pid is the daemon's."""
        return [_which("nsenter"), f"--net=/run/netns/{self.layout.namespace(host)}", _which("unshare"),
                "--mount", "--uts", "--propagation", "private", "sh", "-c",
                f'mount --bind {self.root}/hosts /etc/hosts && hostname {host} && exec "$@"', "sh", *argv]

    # ---- daemons ------------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], host: str | None = None) -> None:
        if self.layout is not None:
            argv = self._on_host(host or CONTROLLER, argv)
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def _start_slurmd(self, node: str) -> None:
        self._start(f"slurmd-{node}", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", node], host=node)

    def start(self, timeout: float = 60) -> "SlurmCluster":
        try:
            if self.nodes is not None:
                if self.nodes < 1:
                    raise ValueError(f"nodes must be positive, got {self.nodes}")
                self.layout = _claim_instance(self.nodes, self.root)
                self._make_network()
            self._write_config()
            m = self.root / "munge"
            self._start("munged", [_which("munged"), "--foreground", "--force", f"--socket={m}/munge.socket",
                                   f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                                   f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
            self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged socket")
            self._start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            for node in self.node_names:
                self._start_slurmd(node)
            self._wait(self._nodes_idle, timeout, "the nodes to become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def node_states(self) -> dict[str, str]:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
        return dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2) \
            if r.returncode == 0 else {}

    def _nodes_idle(self, nodes: list[str] | None = None) -> bool:
        states = self.node_states()
        return all(states.get(n) == "idle" for n in nodes or self.node_names)

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

    # ---- losing a node ------------------------------------------------------------------------------

    def kill_node(self, node: str) -> None:
        """Lose `node` as a crash or power cut does: its link goes down first (so its peers get no
        connection reset, only silence), then every process on it, slurmd included, is SIGKILLed."""
        if self.layout is None or node not in self.layout.node_names:
            raise ValueError(f"no emulated node {node!r} (nodes: {', '.join(self.node_names)})")
        self.layout.lose(node)
        proc = self.procs.pop(f"slurmd-{node}", None)
        if proc is not None:
            proc.wait()

    def revive_node(self, node: str, timeout: float = 90) -> None:
        """Bring a lost node back: link up, and a fresh slurmd unless its own survived (only its link was
        taken down); wait until Slurm takes it back (idle)."""
        _run(_which("ip"), "link", "set", self.layout.veth(node), "up")
        if not any(_comm(pid) == "slurmd" for pid in netns_pids(self.layout.namespace(node))):
            self._start_slurmd(node)
        self._wait(lambda: self._nodes_idle([node]), timeout, f"{node} to come back")

    # ---- logs and teardown --------------------------------------------------------------------------

    def logs_tail(self, n: int = 30) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, wait for them to go, stop the daemons we started, tear down the namespaces
        and the bridge, remove the directory. Safe after a failed or partial start."""
        ctl = self.procs.get("slurmctld")
        if ctl is not None and ctl.poll() is None:
            subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                r = subprocess.run(["squeue", "-h", "-t", "RUNNING,COMPLETING"], env=self.env,
                                   capture_output=True, text=True)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.3)
        for name in sorted(self.procs, key=lambda n: ("slurmd", "slurmctld", "munged").index(n.split("-")[0])):
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        if self.layout is not None:
            self.layout.teardown()  # also whatever the jobs left running inside the nodes
            (REGISTRY / f"{self.layout.index}.json").unlink(missing_ok=True)
            self.layout = None
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster_for_tests(**kwargs):
    """For a module-scoped pytest fixture: a started cluster with SLURM_CONF exported (for sora-launch's
    own sbatch / scontrol / sinfo calls); stopped, and SLURM_CONF restored, on the way out. Skips (saying
    why) only where Slurm cannot be installed; fails where it could be but is not, or does not start."""
    import pytest

    from tests.required_tools import missing_tool

    reason = unavailable_reason(kwargs.get("nodes"))
    if reason:
        print(f"\nskipping the real-Slurm tests: {reason}", file=sys.stderr)
        missing_tool(reason)   # skips, saying why; fails in CI, where `make test` installs Slurm
    missing = [b for b in BINARIES + (NETNS_BINARIES if kwargs.get("nodes") else ()) if _which(b) is None]
    if missing:
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} missing) although this machine could "
                    f"install it: run `bash scripts/install_slurm.sh` (`make test` does)", pytrace=False)
    cluster = SlurmCluster(**kwargs)
    saved = os.environ.get("SLURM_CONF")
    try:
        try:
            cluster.start()
        except RuntimeError as e:
            pytest.fail(f"could not start the test Slurm cluster: {e}", pytrace=False)
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        cluster.stop()


# ---- for tests that run jobs on it -------------------------------------------------------------------

def wait_for(what: str, ok, timeout: float, cluster: SlurmCluster, run: Path | None = None):
    """Poll ok() until it returns something true, and return that; else fail the test with the run's
    batch and rank logs and the daemons' logs."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.25)
    logs = ""
    if run is not None:
        for p in sorted(run.glob("slurm-*.out")) + sorted(run.glob("rank-logs/*")):
            logs += f"\n--- {p}\n" + p.read_text(errors="replace")[-3000:]
    pytest.fail(f"timed out after {timeout} s waiting for {what}{logs}\n{cluster.logs_tail(15)}", pytrace=False)


def job(job_id: str) -> dict[str, str]:
    from launcher.jobs import job_info

    return job_info(job_id) or {}


def finished(job_id: str) -> str | None:
    """The job's final state, or None while it is pending, running or requeued."""
    state = job(job_id).get("JobState")
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None


def steps(run: Path) -> list[dict]:
    """The run's metrics.jsonl records."""
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- by hand ------------------------------------------------------------------------------------------

def _running_instance(index: int | None) -> tuple[Layout, Path]:
    records = sorted(REGISTRY.glob("*.json")) if REGISTRY.is_dir() else []
    live = []
    for record in records:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            info = json.loads(record.read_text())
            if _start_time(info["owner"]) == info["owner_start"]:
                live.append((int(record.stem), info))
    if index is not None:
        live = [(i, info) for i, info in live if i == index]
    if len(live) != 1:
        raise SystemExit(f"{len(live)} running emulated clusters match"
                         + ("" if index is None else f" instance {index}") + ": give --instance K")
    i, info = live[0]
    return Layout(i, info["nodes"]), Path(info["root"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/slurm_cluster.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it until Ctrl-C")
    up.add_argument("--nodes", type=int, help="emulated nodes in network namespaces (default: one plain node)")
    up.add_argument("--cpus", type=int, default=2, help="CPUs per node (default 2)")
    up.add_argument("--root", help="directory for its files (default: a new temporary one)")
    up.add_argument("--slurmd-timeout", type=int, default=300,
                    help="seconds before Slurm declares a silent node down (default 300, Slurm's own)")
    for name in ("kill-node", "revive-node"):
        q = sub.add_parser(name, help=f"{name.split('-')[0]} a node of the running emulated cluster")
        q.add_argument("node")
        q.add_argument("--instance", type=int, help="which cluster, when several run (K of 10.213.K.*)")
    sub.add_parser("clean", help="tear down emulated clusters whose owner died")
    a = p.parse_args(argv)

    if a.command == "clean":
        print("cleaned: " + (", ".join(clean_leftovers()) or "nothing"))
        return 0
    if a.command in ("kill-node", "revive-node"):
        layout, root = _running_instance(a.instance)
        cluster = SlurmCluster(root=root, nodes=layout.nodes)
        cluster.layout = layout
        if a.node not in layout.node_names:
            raise SystemExit(f"no node {a.node!r} (nodes: {', '.join(layout.node_names)})")
        if a.command == "kill-node":
            layout.lose(a.node)
            print(f"{a.node}: link down, every process on it killed")
        else:
            cluster.revive_node(a.node)
            print(f"{a.node}: back (idle)")
        return 0

    reason = unavailable_reason(a.nodes)
    if reason:
        sys.exit(reason)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    cluster = SlurmCluster(a.root, cpus=a.cpus, nodes=a.nodes, slurmd_timeout=a.slurmd_timeout).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # after start: children would inherit the mask
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    if cluster.layout:
        lay = cluster.layout
        print("# nodes: " + ", ".join(f"{n} {lay.addr[n]} (netns {lay.namespace(n)})" for n in lay.node_names),
              flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
