"""`sora-launch`: run a sora subcommand on local ranks or as a Slurm job."""

from __future__ import annotations

import argparse
import os
import sys

from launcher import local, slurm

_EPILOG = "Launcher options go before the sora subcommand; everything after it is passed to sora."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora-launch", description=__doc__, epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{local,slurm}")

    p = sub.add_parser("local", help="N ranks on this machine (torchrun --standalone)", epilog=_EPILOG)
    p.add_argument("--nproc", type=int, required=True, help="ranks to start")
    p.add_argument("--master-port", type=int, help="fixed rendezvous port (default: a free one)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="sora subcommand and its args")
    p.set_defaults(subparser=p)  # so errors print this subcommand's usage

    p = sub.add_parser("slurm", help="write and submit an sbatch script", epilog=_EPILOG)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True, help="ranks per node")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--time", help="Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS")
    p.add_argument("--job-name")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node, e.g. 400G")
    p.add_argument("--output-dir",
                   help="logs and job.sbatch (default: the run.dir=... override if given, else runs/slurm)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run before training, e.g. 'source .venv/bin/activate' (repeatable)")
    p.add_argument("--sbatch-extra", action="append", default=[], metavar="'#SBATCH ...'",
                   help="extra #SBATCH line (repeatable)")
    p.add_argument("--signal-seconds", type=int, default=120,
                   help="send USR1 (checkpoint, then requeue) this long before the time limit")
    p.add_argument("--python", default="python", help="interpreter on the compute nodes")
    p.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    p.add_argument("args", nargs=argparse.REMAINDER, help="sora subcommand and its args")
    p.set_defaults(subparser=p)
    return parser


def _sora_args(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args  # allow `sora-launch local --nproc 2 -- train ...`


def _run_slurm(ns: argparse.Namespace, args: list[str]) -> int:
    job = slurm.SlurmJob(
        args=args, nodes=ns.nodes, gpus_per_node=ns.gpus_per_node, partition=ns.partition,
        account=ns.account, qos=ns.qos, constraint=ns.constraint, time=ns.time,
        job_name=ns.job_name, cpus_per_task=ns.cpus_per_task, mem=ns.mem,
        # Absolute, so logs land in the same place whatever directory the job starts in.
        output_dir=os.path.abspath(ns.output_dir or slurm.default_output_dir(args)),
        setup=ns.setup, sbatch_extra=ns.sbatch_extra, signal_seconds=ns.signal_seconds,
        python=ns.python,
    )
    if ns.dry_run:
        print(job.render(), end="")
        return 0
    job_id = slurm.submit(job)
    print(job_id)
    print(f"submitted job {job_id}: script {job.script_path}, logs in {job.output_dir}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int | None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    args = _sora_args(ns.args)
    try:
        if ns.command == "slurm":
            return _run_slurm(ns, args)
        # Becomes torchrun: signals reach it directly and its exit code is the launcher's.
        local.exec_local(ns.nproc, args, master_port=ns.master_port)
    except ValueError as e:
        ns.subparser.error(str(e))
    except RuntimeError as e:
        print(f"sora-launch: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
