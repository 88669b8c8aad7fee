"""Pick the compute device once (``--device auto|cpu|cuda``) and pass it down."""

from __future__ import annotations

from curate.errors import UsageError


def resolve_device(name: str = "auto") -> str:
    """Return ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``auto`` prefers CUDA when available."""
    name = (name or "auto").lower()
    if name == "cpu":
        return "cpu"
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name} requested but torch.cuda.is_available() is False; use --device cpu"
            )
        return name
    raise UsageError(f"--device {name!r} is not one of auto, cpu, cuda")
