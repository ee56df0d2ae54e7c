"""`sora-launch`: run a sora subcommand on local ranks, as a Slurm job, or on a list of hosts;
follow, inspect and cancel the Slurm job recorded in a run directory."""

from __future__ import annotations

import argparse
import os
import sys

from launcher import hosts, jobs, local, settings, slurm

_EPILOG = "Launcher options go before the sora subcommand; everything after it is passed to sora."
_COMMANDS = "{local,slurm,hosts,status,cancel,logs}"


def _env_pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name, value


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `slurm` and `hosts`."""
    p.add_argument("--setup", action="append", default=None, metavar="LINE",
                   help="shell line run before training, e.g. 'source .venv/bin/activate' (repeatable)")
    p.add_argument("--env", action="append", type=_env_pair, default=None, metavar="NAME=VALUE",
                   help="environment variable for the ranks, set as given (repeatable)")
    p.add_argument("--network", choices=list(slurm.NETWORK_PRESETS),
                   help="NCCL/network preset (default: default); a variable exported before wins over it")
    p.add_argument("--launcher", choices=list(slurm.LAUNCHERS), help="per-node launcher (default torchrun)")
    p.add_argument("--python", help="interpreter on the compute nodes (default: python)")
    p.add_argument("--module", default="sora.cli", help="python module the ranks run (default: sora.cli)")
    p.add_argument("--dry-run", action="store_true", help="print the script, start nothing")
    p.add_argument("args", nargs=argparse.REMAINDER, help="sora subcommand and its args")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora-launch", description=__doc__, epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar=_COMMANDS)

    p = sub.add_parser("local", help="N ranks on this machine (torchrun --standalone)", epilog=_EPILOG)
    p.add_argument("--nproc", type=int, required=True, help="ranks to start")
    p.add_argument("--master-port", type=int, help="fixed rendezvous port (default: a free one)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="sora subcommand and its args")
    p.set_defaults(subparser=p)  # so errors print this subcommand's usage

    p = sub.add_parser(
        "slurm", help="write and submit an sbatch script (requeues itself on preemption)", epilog=_EPILOG
        + " Every option may also come from a `launcher:` section of the config (flags win).")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node, one rank each; 0 for a CPU job")
    p.add_argument("--nproc-per-node", type=int, help="ranks per node (default: --gpus-per-node)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--exclude", metavar="NODES", help="nodes not to run on, e.g. node[3,7] (one lost before)")
    p.add_argument("--time", help="Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS")
    p.add_argument("--job-name")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per node (one task per node runs its ranks)")
    p.add_argument("--mem", help="memory per node, e.g. 400G")
    p.add_argument("--output-dir",
                   help="logs, job.sbatch and the job id (default: the run directory, else runs/slurm)")
    p.add_argument("--sbatch-extra", action="append", default=None, metavar="'#SBATCH ...'",
                   help="extra #SBATCH line (repeatable)")
    p.add_argument("--signal-seconds", type=int,
                   help="send USR1 (checkpoint, then requeue) this long before the time limit (default 120)")
    p.add_argument("--max-restarts", type=int,
                   help="stop requeueing after this many restarts (default 20): no endless crash loop")
    _add_job_options(p)
    p.set_defaults(subparser=p)

    p = sub.add_parser("hosts", help="multi-node without Slurm: one launcher per host of a hostfile",
                       epilog=_EPILOG)
    p.add_argument("--hostfile", required=True, help="lines of 'HOSTNAME slots=N' (DeepSpeed's format)")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--workdir", help="directory to run in on every host (default: this one)")
    p.add_argument("--output-dir", help="logs and hosts.sh (default: the run directory, else runs/hosts)")
    p.add_argument("--ssh", default="ssh", help="remote shell command (default: ssh)")
    _add_job_options(p)
    p.set_defaults(subparser=p)

    p = sub.add_parser("status", help="state of the Slurm job recorded in RUN_DIR")
    p.add_argument("run_dir")
    p.set_defaults(subparser=p)
    p = sub.add_parser("cancel", help="cancel the Slurm job recorded in RUN_DIR")
    p.add_argument("run_dir")
    p.set_defaults(subparser=p)
    p = sub.add_parser("logs", help="print (or follow) the logs of the job recorded in RUN_DIR")
    p.add_argument("run_dir")
    p.add_argument("--rank", type=int, help="this rank's log instead of the batch log")
    p.add_argument("-n", "--lines", type=int, default=50, help="last N lines (0: all; default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows (tail -f)")
    p.add_argument("--list", action="store_true", help="list the log files")
    p.set_defaults(subparser=p)
    return parser


def _sora_args(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args  # allow `sora-launch local --nproc 2 -- train ...`


def _check_args(ns: argparse.Namespace, args: list[str]) -> None:
    if not args or args[0].startswith("-"):
        raise ValueError("missing the sora subcommand to run (e.g. `train CONFIG key=value ...`)")
    if ns.module == "sora.cli":
        settings.check_sora_args(args)  # missing / invalid config: refused before anything starts


def _section(ns: argparse.Namespace, args: list[str]) -> dict:
    """The config's `launcher:` section; only sora's own commands have a sora config to read."""
    return settings.launcher_section(args) if ns.module == "sora.cli" else {}


def _run_dir(ns: argparse.Namespace, args: list[str]) -> str | None:
    return settings.run_dir(args) if ns.module == "sora.cli" else None


def _common_settings(ns: argparse.Namespace, section: dict) -> dict:
    out = dict(section)
    for name in ("network", "launcher", "python"):
        if getattr(ns, name) is not None:
            out[name] = getattr(ns, name)
    if ns.setup:
        out["setup"] = out.get("setup", []) + ns.setup
    if ns.env:
        out["env"] = {**out.get("env", {}), **dict(ns.env)}
    return out


def slurm_job(ns: argparse.Namespace, args: list[str]) -> slurm.SlurmJob:
    """The job from the config's `launcher:` section overlaid with the flags given."""
    _check_args(ns, args)
    kw = _common_settings(ns, _section(ns, args))
    for name in ("nodes", "gpus_per_node", "nproc_per_node", "partition", "account", "qos", "constraint",
                 "exclude", "time", "job_name", "cpus_per_task", "mem", "output_dir", "signal_seconds", "max_restarts"):
        if getattr(ns, name) is not None:
            kw[name] = getattr(ns, name)
    if ns.sbatch_extra:
        kw["sbatch_extra"] = kw.get("sbatch_extra", []) + ns.sbatch_extra
    for name in ("nodes", "gpus_per_node"):
        if name not in kw:
            raise ValueError(f"--{name.replace('_', '-')} is required (as a flag or in the config's launcher: section)")
    # Absolute, so logs land in the same place whatever directory the job starts in.
    out = kw.pop("output_dir", None) or _run_dir(ns, args) or slurm.DEFAULT_OUTPUT_DIR
    return slurm.SlurmJob(args=args, output_dir=os.path.abspath(out), module=ns.module, **kw)


def hosts_job(ns: argparse.Namespace, args: list[str]) -> hosts.HostsJob:
    host_list = hosts.parse_hostfile(ns.hostfile)  # syntax errors first, with their line numbers
    _check_args(ns, args)
    section = _section(ns, args)
    kw = {k: v for k, v in _common_settings(ns, section).items() if k in ("setup", "env", "network", "launcher", "python")}
    out = ns.output_dir or _run_dir(ns, args) or "runs/hosts"
    return hosts.HostsJob(args=args, hostfile=os.path.abspath(ns.hostfile), hosts=host_list,
                          output_dir=os.path.abspath(out), workdir=os.path.abspath(ns.workdir or os.getcwd()),
                          master_port=ns.master_port, ssh=ns.ssh, module=ns.module, **kw)


def _run_slurm(ns: argparse.Namespace, args: list[str]) -> int:
    job = slurm_job(ns, args)
    if ns.dry_run:
        print(job.render(), end="")
        return 0
    job_id = slurm.submit(job)
    print(job_id)
    print(f"submitted job {job_id}: script {job.script_path}, logs in {job.output_dir}; "
          f"sora-launch status|logs|cancel {job.output_dir}", file=sys.stderr)
    return 0


def _run_hosts(ns: argparse.Namespace, args: list[str]) -> int:
    job = hosts_job(ns, args)
    text = job.render()
    if ns.dry_run:
        print(text, end="")
        return 0
    job.script_path.parent.mkdir(parents=True, exist_ok=True)
    job.script_path.write_text(text)
    sys.stdout.flush()
    os.execvp("bash", ["bash", str(job.script_path)])


def _run_logs(ns: argparse.Namespace) -> int:
    if ns.list:
        print("\n".join(str(p) for p in jobs.log_files(ns.run_dir)))
        return 0
    path = jobs.log_path(ns.run_dir, ns.rank)
    if ns.follow:
        sys.stdout.flush()
        os.execvp("tail", ["tail", "-n", str(ns.lines) if ns.lines > 0 else "+1", "-F", str(path)])
    print(jobs.tail(path, ns.lines))
    return 0


def main(argv: list[str] | None = None) -> int | None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.command == "status":
            print(jobs.status(ns.run_dir))
            return 0
        if ns.command == "cancel":
            print(jobs.cancel(ns.run_dir))
            return 0
        if ns.command == "logs":
            return _run_logs(ns)
        args = _sora_args(ns.args)
        if ns.command == "slurm":
            return _run_slurm(ns, args)
        if ns.command == "hosts":
            return _run_hosts(ns, args)
        # Becomes torchrun: signals reach it directly and its exit code is the launcher's.
        local.exec_local(ns.nproc, args, master_port=ns.master_port)
    except ValueError as e:
        ns.subparser.error(str(e))
    except RuntimeError as e:
        print(f"sora-launch: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
