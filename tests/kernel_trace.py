"""Run the `sora` command line recording what went through the kernel backends:

    python -m tests.kernel_trace OUT.json train CONFIG key=value ...

OUT.json gets {"launches": {kernel name: count}, "attention": [{"q": shape, "k": shape, "dtype"}],
"backends": [the `kernel backends: ...` lines sora.ops logged], "rc": exit code}. Launches are counted
under Triton's interpreter (TRITON_INTERPRET=1, which the caller sets); attention calls at the Triton
backend's entry point. Used by tests/test_gpu_path.py.
"""
from __future__ import annotations

import collections
import json
import logging
import sys


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    launches, attention, backends = collections.Counter(), [], []

    from triton.runtime import interpreter
    run = interpreter.InterpretedFunction.run

    def counted_run(self, *a, **kw):
        launches[self.fn.__name__] += 1
        return run(self, *a, **kw)
    interpreter.InterpretedFunction.run = counted_run

    import kernels.flash_attn as fa
    entry = fa.flash_attn_varlen_func

    def traced(q, k, v, *a, **kw):
        attention.append({"q": list(q.shape), "k": list(k.shape), "dtype": str(q.dtype)})
        return entry(q, k, v, *a, **kw)
    fa.flash_attn_varlen_func = traced   # sora.ops imports it from the module at each call

    class Backends(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("kernel backends:"):
                backends.append(record.getMessage())
    logging.getLogger("sora.ops").addHandler(Backends())
    logging.getLogger("sora.ops").setLevel(logging.INFO)

    from sora.cli import main as sora_main
    rc = 1
    try:
        rc = sora_main(args) or 0
    finally:
        with open(out, "w") as f:
            json.dump({"launches": launches, "attention": attention, "backends": backends, "rc": rc}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
