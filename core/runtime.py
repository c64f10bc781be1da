"""Where model artefacts are cached and which device a model runs on.

Every model tagger resolves its device and cache the same way, so ``device = "auto"`` means
the same thing everywhere: CUDA when torch sees a GPU, else CPU. Production users set
``device = "cuda"`` (fail loudly if absent) or ``"cpu"``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def glia_home() -> Path:
    """``$GLIA_HOME`` (default ``.glia`` in the working directory): Prefect state, model cache."""
    return Path(os.environ.get("GLIA_HOME", ".glia")).resolve()


def model_cache_dir(name: str) -> Path:
    """A folder for derived model files (a dequantised LM, a trained head), created on demand.

    ``$GLIA_MODEL_CACHE`` overrides the default ``$GLIA_HOME/models``, so test sessions and
    CI runs can share one cache across temporary homes.
    """
    root = Path(os.environ["GLIA_MODEL_CACHE"]) if os.environ.get("GLIA_MODEL_CACHE") else glia_home() / "models"
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def hash_files(h: Any, named: Iterable[tuple[str, Path]]) -> None:
    """Add each ``(name, file)`` to the hash ``h`` as the name, a NUL and the sha256 of the
    file's bytes: the layout of every model and training-data key."""
    for name, f in named:
        h.update(name.encode() + b"\0")
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())


def file_stamps(files: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """``(path, size, mtime_ns)`` per file: a key that changes when any file does, for
    caching a hash of their contents within a process."""
    return tuple((str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in files)


def check_device(device: object, where: str = "") -> None:
    """Refuse a device setting other than ``auto``, ``cpu`` or ``cuda[:N]`` (no torch needed:
    taggers check their settings when built, before any model is loaded)."""
    if device != "auto" and device != "cpu" and not str(device).startswith("cuda"):
        raise ValueError(f"{where}device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def dtype_name(device: str) -> str:
    """The torch dtype models run in on ``device``: bf16 on a GPU, fp32 on the CPU."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def pick_device(preference: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda`` without a GPU is an error."""
    check_device(preference)
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but torch sees no CUDA GPU; use device = \"cpu\" or \"auto\"")
    return preference
