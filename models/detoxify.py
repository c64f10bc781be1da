"""detoxify (the production toxicity classifier) loaded from local files only: a user's checkpoint
and the Hugging Face config and tokenizer folder of its base model; nothing is downloaded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

_DETOXIFY: dict[tuple[str, str, str], tuple[Any, threading.Lock]] = {}
_DETOXIFY_LOCK = threading.Lock()


def load_detoxify(checkpoint: Path, config_path: Path, device: str) -> tuple[Any, threading.Lock]:
    """A ``detoxify.Detoxify`` built from local files only, once per process and device.

    ``Detoxify(checkpoint=..., huggingface_config_path=...)`` still asks the hub for the base
    model's config by the name stored in the checkpoint (``arch.args.model_type``, e.g.
    ``bert-base-uncased``), which fails offline. So the checkpoint is read here the way
    detoxify's ``load_checkpoint`` reads it, that name is pointed at the local config folder, and
    detoxify's own ``get_model_and_tokenizer`` builds the model; ``Detoxify.predict`` scores.
    """
    import torch
    from detoxify import Detoxify
    from detoxify.detoxify import get_model_and_tokenizer

    key = (str(checkpoint), str(config_path), device)
    with _DETOXIFY_LOCK:
        if key not in _DETOXIFY:
            loaded = torch.load(checkpoint, map_location=device, weights_only=False)
            if "config" not in loaded or "state_dict" not in loaded:
                raise ValueError(f"{checkpoint} is not a detoxify checkpoint: it needs 'config' and 'state_dict' entries")
            args = dict(loaded["config"]["arch"]["args"])
            args["model_type"] = str(config_path)
            model, tokenizer = get_model_and_tokenizer(**args, state_dict=loaded["state_dict"],
                                                       huggingface_config_path=str(config_path))
            renames = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}
            det = Detoxify.__new__(Detoxify)  # detoxify's predict, on the model built above
            det.model, det.tokenizer, det.device = model.to(device), tokenizer, device
            det.class_names = [renames.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]
            if "toxicity" not in det.class_names:
                raise ValueError(f"{checkpoint}: no 'toxic'/'toxicity' class among {det.class_names}")
            _DETOXIFY[key] = (det, threading.Lock())
        return _DETOXIFY[key]


def detoxify_scores(det: Any, lock: threading.Lock, chunks: list[str], batch_size: int) -> np.ndarray:
    """The ``toxicity`` probability per chunk, batched longest first (less padding)."""
    order = np.argsort([-len(c) for c in chunks], kind="stable")
    out = np.empty(len(chunks), np.float32)
    with lock:  # one forward pass at a time: the tokenizer and the GPU are shared
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            res = det.predict([chunks[i] for i in idx])
            out[idx] = np.atleast_1d(np.asarray(res["toxicity"], np.float32))
    return out
