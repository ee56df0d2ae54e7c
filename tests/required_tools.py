"""Tests that need a tool (nvcc, a C++ compiler, Slurm): skipped, with the reason, where the tool may
be missing; failed where it must be there. CI=true (set by .ci/run, and by most CI services) means
the machine is meant to have every tool `make test` relies on, so a missing one is an error there
rather than a check that silently did not run."""
from __future__ import annotations

import os

import pytest


def in_ci(environ=os.environ) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_tool(reason: str, environ=os.environ) -> None:
    """Skip (outside CI) or fail (in CI) the calling test, naming what is missing."""
    if in_ci(environ):
        pytest.fail(f"{reason} (CI is set, so this machine must have it)", pytrace=False)
    pytest.skip(reason)
