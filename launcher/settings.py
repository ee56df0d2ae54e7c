"""Launcher settings from the sora config: its `launcher:` section, its run directory, and checks that
refuse a job whose config is missing or invalid before anything is submitted.

A config may carry the job's shape next to the model it trains:

    launcher:
      nodes: 4
      gpus_per_node: 8
      partition: gpu
      time: "2-00:00:00"
      setup: ["module load cuda/12.4", "source .venv/bin/activate"]
      env: {NCCL_DEBUG: INFO}

Command-line flags win over the section; `launcher.KEY=VALUE` among the sora overrides works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Subcommands whose first argument is a config file (sora's command-line contract).
CONFIG_COMMANDS = ("train", "train-vae")

# Keys of a `launcher:` section: SlurmJob fields that are not per-invocation.
SECTION_KEYS = (
    "nodes", "gpus_per_node", "nproc_per_node", "partition", "account", "qos", "constraint", "exclude", "time",
    "job_name", "cpus_per_task", "mem", "output_dir", "setup", "sbatch_extra", "env", "network",
    "signal_seconds", "max_restarts", "launcher", "python",
)
_INT_KEYS = {"nodes", "gpus_per_node", "nproc_per_node", "cpus_per_task", "signal_seconds", "max_restarts"}
_LIST_KEYS = {"setup", "sbatch_extra"}


def config_path(args: list[str]) -> str | None:
    """The config file argument of `train CONFIG ...` / `train-vae CONFIG ...`, else None."""
    if len(args) >= 2 and args[0] in CONFIG_COMMANDS and "=" not in args[1] and not args[1].startswith("-"):
        return args[1]
    return None


def _overrides(args: list[str]) -> list[str]:
    return [a for a in args[2:] if "=" in a and not a.startswith("-")]


def _read_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping at the top level")
    return data


def _coerce(key: str, value: Any) -> Any:
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
            raise ValueError(f"config key 'launcher.{key}': {value!r} is not an integer")
        return int(value)
    if key in _LIST_KEYS:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"config key 'launcher.{key}': give a list of strings, not {value!r}")
        return list(value)
    if key == "time" and not isinstance(value, str):
        raise ValueError(f"config key 'launcher.time': quote the time limit, e.g. \"10:00\" "
                         f"(YAML reads an unquoted 10:00 as the number 600), got {value!r}")
    if key == "env":
        if not isinstance(value, dict):
            raise ValueError(f"config key 'launcher.env': give a mapping NAME: value, not {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if value is None:
        return None
    return str(value)


def launcher_section(args: list[str]) -> dict[str, Any]:
    """The `launcher:` section of the config named in `args`, with `launcher.KEY=VALUE` overrides applied,
    as SlurmJob keyword arguments. Unknown keys are refused, naming them."""
    section: dict[str, Any] = {}
    path = config_path(args)
    if path is not None:
        raw = _read_yaml(path).get("launcher") or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config key 'launcher' is a section; give it a mapping, not {raw!r}")
        section.update(raw)
    for text in _overrides(args):
        key, raw_value = text.split("=", 1)
        if key.startswith("launcher."):
            name = key[len("launcher."):].replace("-", "_")
            typed = name in _INT_KEYS or name in _LIST_KEYS or name == "env"  # the rest stay strings
            section[name] = yaml.safe_load(raw_value) if typed and raw_value else raw_value
    out = {}
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name not in SECTION_KEYS:
            raise ValueError(f"unknown config key 'launcher.{key}' (known: {', '.join(SECTION_KEYS)})")
        out[name] = _coerce(name, value)
    return out


def run_dir(args: list[str]) -> str | None:
    """The run directory the sora command will use: the last `run.dir=` override, else the config's."""
    for arg in reversed(args):
        if arg.startswith("run.dir="):
            return arg.split("=", 1)[1]
    path = config_path(args)
    if path is not None and Path(path).is_file():
        run = _read_yaml(path).get("run") or {}
        if isinstance(run, dict) and run.get("dir"):
            return str(run["dir"])
    return None


def check_sora_args(args: list[str]) -> None:
    """Refuse, before submitting, a sora command whose config is missing or invalid (sora's own checks)."""
    if not args or args[0] not in CONFIG_COMMANDS:
        return
    path = config_path(args)
    if path is None:
        raise ValueError(f"`{args[0]}` needs a config file: {args[0]} CONFIG [key=value ...]")
    _read_yaml(path)  # missing / not YAML: a clear message naming the file
    from sora.config import ConfigError, load_config  # sora's own validation, same as the job will run

    overrides = [o for o in _overrides(args) if not o.startswith("launcher.")]
    try:
        load_config(path, overrides)
    except ConfigError as e:
        raise ValueError(f"config {path}: {e}") from None

