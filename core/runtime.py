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


DTYPES = ("auto", "float32", "bfloat16")


def check_dtype(dtype: object, where: str = "") -> None:
    """Refuse a dtype setting other than ``auto``, ``float32`` or ``bfloat16``."""
    if dtype not in DTYPES:
        raise ValueError(f"{where}dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16).

    Without it torch still runs bf16, but by converting to fp32 and back: slower than fp32,
    so ``auto`` only picks bf16 on a CPU that has it. ``GLIA_CPU_BF16=0|1`` overrides.
    """
    forced = os.environ.get("GLIA_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(p()) for p in probes if p is not None)


def dtype_name(device: str, preference: str = "auto") -> str:
    """The torch dtype models run in on ``device``: ``preference`` when it names one; for
    ``auto`` bf16 on a GPU and on a CPU with native bf16 (:func:`native_bf16`), else fp32."""
    check_dtype(preference)
    if preference != "auto":
        return preference
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if native_bf16() else "float32"


def pick_device(preference: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda`` without a GPU is an error."""
    check_device(preference)
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but torch sees no CUDA GPU; use device = \"cpu\" or \"auto\"")
    return preference
