import os

# The suite's DeepSpeed runs are CPU runs (gloo, several ranks on one machine), also on a GPU host
# where the Makefile exports DS_ACCELERATOR=cuda for training; the GPU tests are kernel tests.
os.environ["DS_ACCELERATOR"] = "cpu"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def triton_mode(cuda_available: bool, environ) -> str:
    """How this pytest process runs Triton kernels, fixed before anything imports kernels/ (Triton
    reads TRITON_INTERPRET when a kernel is decorated):
    'interpret': under Triton's CPU interpreter (no GPU, or TRITON_INTERPRET=1 asked for), so the
                 CPU-tensor cases (marked `interpreter`) run here;
    'compiled':  on a CUDA host, compiled for the GPU. A compiled kernel cannot take CPU tensors, so
                 the `interpreter` cases are skipped here and run in a child pytest with
                 TRITON_INTERPRET=1 and no visible GPU (tests/test_triton_kernels.py,
                 test_interpreter_cases_in_a_subprocess)."""
    if environ.get("TRITON_INTERPRET", "").strip() not in ("", "0"):
        return "interpret"
    return "compiled" if cuda_available else "interpret"


TRITON_MODE = triton_mode(torch.cuda.is_available(), os.environ)
if TRITON_MODE == "interpret":
    os.environ["TRITON_INTERPRET"] = "1"
INTERPRETER_SKIP_REASON = ("a CUDA host: Triton kernels are compiled in this process and cannot run on CPU "
                           "tensors; these interpreter cases run in a child pytest with TRITON_INTERPRET=1 "
                           "(test_interpreter_cases_in_a_subprocess)")


def runs_under_interpreter(item) -> bool:
    """A test that launches Triton kernels on CPU tensors (`interpreter`, not a `gpu` case)."""
    return "interpreter" in item.keywords and "gpu" not in item.keywords


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # two shared cores: keep every test single-threaded
    yield


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Tiny dataset + VAE shared by the tests of whole training runs (tests/cli_runs.py)."""
    from tests.cli_runs import make_world

    return make_world(tmp_path_factory.mktemp("world"))


def pytest_configure(config):
    for name, what in (("slow", "takes more than a few seconds"), ("distributed", "starts several ranks"),
                       ("gpu", "needs a CUDA device"),
                       ("interpreter", "launches Triton kernels on CPU tensors (TRITON_INTERPRET=1)"),
                       ("slurm", "starts a real Slurm: one node, or several in network namespaces (tests/slurm_cluster.py)")):
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(config, items):
    if TRITON_MODE == "compiled":
        skip = pytest.mark.skip(reason=INTERPRETER_SKIP_REASON)
        for item in items:
            if runs_under_interpreter(item):
                item.add_marker(skip)
