import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU, Triton kernels run under Triton's CPU interpreter. Triton reads this when a kernel
# is decorated, i.e. when kernels/ is first imported, so it is set here before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
                       ("slurm", "starts a real Slurm: one node, or several in network namespaces (tests/slurm_cluster.py)")):
        config.addinivalue_line("markers", f"{name}: {what}")
