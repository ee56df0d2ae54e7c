"""Installs the `sora`, `kernels` and `launcher` packages and the `sora` / `sora-launch` commands.

torch is required loosely (>=2.4) so a CUDA build already in the environment is kept; on CPU-only
machines install the CPU build first (`make setup` does). DeepSpeed is pinned: its Ulysses and
ZeRO-3 APIs change between releases; install it with --no-build-isolation so its build sees the
installed torch instead of fetching another.
"""
import glob
import os
import sys

from setuptools import find_packages, setup


# ---- the csrc/ extension (sora._C) ----------------------------------------------------------------
# One extension, built with ninja: the C++ kernels (csrc/cpu) always; the CUDA kernels (csrc/cuda)
# too when the installed torch is a CUDA build and nvcc is found. Switches (environment):
#   SORA_SKIP_EXT=1            do not build it (sora.ops then serves every op with torch/Triton)
#   MAX_JOBS=N                 parallel compile jobs (ninja; torch's BuildExtension reads it)
#   SORA_CUDA_ARCHS="80;90a;100;120"  CUDA cubins (the default; those the toolkit lacks are dropped)
#   SORA_CUDA_PTX=90           PTX kept for GPUs without a cubin (JIT at load); see csrc/nvcc_flags.py
#   SORA_EXT_CPU_ONLY=1        build only the C++ kernels even with a CUDA torch
def _truthy(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def _extension():
    """(ext_modules, cmdclass) for sora._C; empty when skipped or torch is not importable."""
    if _truthy("SORA_SKIP_EXT"):
        print("sora: SORA_SKIP_EXT set, not building the sora._C extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # a build-isolated install before torch exists: pure Python package
        print("sora: torch not importable at build time, not building sora._C "
              "(install torch first and use --no-build-isolation)", file=sys.stderr)
        return [], {}
    sources = ["csrc/bindings.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and not _truthy("SORA_EXT_CPU_ONLY")
    if torch.version.cuda is not None and CUDA_HOME is None:
        print("sora: CUDA torch but no CUDA toolkit (nvcc) found: building the C++ kernels only", file=sys.stderr)
    common = dict(name="sora._C", include_dirs=[os.path.abspath("csrc")], extra_link_args=["-fopenmp"])
    if not with_cuda:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)
    else:
        sys.path.insert(0, os.path.abspath("csrc"))
        import nvcc_flags

        nvcc_bin = os.path.join(CUDA_HOME, "bin", "nvcc")
        archs, ptx = nvcc_flags.resolve(os.environ, nvcc_flags.toolkit_archs(nvcc_bin),
                                        log=lambda m: print(m, file=sys.stderr))
        # the -gencode flags given here replace torch's own (TORCH_CUDA_ARCH_LIST)
        nvcc = nvcc_flags.BASE + nvcc_flags.gencode(archs, ptx)
        ext = CUDAExtension(sources=sources + sorted(glob.glob("csrc/cuda/*.cu")),
                            define_macros=[("SORA_WITH_CUDA", None),
                                           ("SORA_CUDA_ARCHS", nvcc_flags.arch_token(archs, ptx))],
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


_EXT_MODULES, _CMDCLASS = _extension()

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
        # the kernels use tl.make_tensor_descriptor, triton.set_allocator and triton.knobs (3.4+)
        "triton>=3.4; platform_system == 'Linux'",
        "numpy>=1.24,<2.3",          # Triton's CPU interpreter breaks with numpy >= 2.3
        "webdataset>=0.2.86",
        "av>=12",
        "pillow>=10",
        "einops>=0.7",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.14",
        "scenedetect-headless>=0.7",  # sora ingest --scenes: PySceneDetect's ContentDetector (OpenCV, no GUI libs)
    ],
    extras_require={
        # transformers / diffusers: the pretrained text-encoder and video-VAE loading tests
        # pyarrow: the Parquet-manifest ingest test; triton 3.6+: the interpreter of 3.4/3.5 checks
        # descriptor strides in elements, not bytes
        # peft: LoRA (lora.rank > 0) and its tests
        # pytest-xdist: `make test` runs on both cores (tests are single-threaded: conftest)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "transformers>=4.44", "diffusers>=0.35", "pyarrow>=14", "peft>=0.15",
                 "triton>=3.6; platform_system == 'Linux'"],
        "parquet": ["pyarrow>=14"],                       # sora ingest --captions FILE.parquet
        "flash": ["flash-attn>=2.6"],
        "t5": ["transformers>=4.44", "sentencepiece"],
        "bench": ["matplotlib>=3.7"],                  # PNG plots of benchmarks/ (optional)
        "diffusers": ["diffusers>=0.35"],                 # vae.pretrained (Wan 2.1 / 2.2, CogVideoX, HunyuanVideo VAEs), Wan pipelines
        "lora": ["peft>=0.15"],                           # lora.rank > 0: train LoRA adapters
    },
    entry_points={"console_scripts": ["sora=sora.cli:main", "sora-launch=launcher.cli:main"]},
    ext_modules=_EXT_MODULES,
    cmdclass=_CMDCLASS,
)
