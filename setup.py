"""Installs the `sora`, `kernels` and `launcher` packages and the `sora` / `sora-launch` commands.

torch is required loosely (>=2.4) so a CUDA build already in the environment is kept; on CPU-only
machines install the CPU build first (`make setup` does). DeepSpeed is pinned: its Ulysses and
ZeRO-3 APIs change between releases; install it with --no-build-isolation so its build sees the
installed torch instead of fetching another.
"""
from setuptools import find_packages, setup

setup(
    name="sora",
    version="0.1.0",
    description="Sora-style video diffusion transformer training: packed variable-size spacetime patches",
    python_requires=">=3.10",
    packages=find_packages(include=["sora", "sora.*", "kernels", "kernels.*", "launcher", "launcher.*"]),
    package_data={"launcher": ["templates/*.sbatch"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed==0.19.8",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy>=1.24,<2.3",          # Triton's CPU interpreter breaks with numpy >= 2.3
        "webdataset>=0.2.86",
        "av>=12",
        "pillow>=10",
        "einops>=0.7",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.14",
    ],
    extras_require={
        "test": ["pytest>=8", "transformers>=4.44"],   # transformers: the T5 loading test
        "flash": ["flash-attn>=2.6"],
        "t5": ["transformers>=4.44", "sentencepiece"],
    },
    entry_points={"console_scripts": ["sora=sora.cli:main", "sora-launch=launcher.cli:main"]},
)
