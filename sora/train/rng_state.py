"""Every random number generator a training process uses, as JSON (checkpointed per rank).

Resume is exact only if the noise, the timesteps and anything else drawn after the restart are
the draws the uninterrupted run would have made.
"""
from __future__ import annotations

import base64
import random

import numpy as np
import torch


def _bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture(generators: dict[str, torch.Generator]) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": _bytes(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "generators": {name: _bytes(g.get_state()) for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = _bytes(torch.cuda.get_rng_state())
    return state


def restore(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(_tensor(state["torch"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    for name, g in generators.items():
        if name not in state["generators"]:
            raise KeyError(f"checkpoint has no state for RNG '{name}' (has: {', '.join(state['generators'])})")
        g.set_state(_tensor(state["generators"][name]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_tensor(state["cuda"]))
