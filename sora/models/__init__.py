"""Models. Public API: `load_dit` / `save_dit` (sora/models/dit_io.py) and `DiT.denoise`."""
from sora.models.dit_io import load_dit, save_dit

__all__ = ["load_dit", "save_dit"]
