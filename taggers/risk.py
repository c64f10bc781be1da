"""Toxicity risk: a probability per document that it is hateful or offensive, and a flag.

Three backends (``[taggers.risk] backend``):

- ``"default"``: a bidirectional LSTM trained on Wikipedia talk-page comments (Jigsaw) that ships
  inside the MIT-licensed PyPI package ``tox-block`` 0.1.2 (``lstm_model = "tox_block"``; or
  ``"toxic_classifier"`` from ``toxic-comment-classifier`` 0.3.0), read with h5py and run in numpy
  (``models.risk_lstm``): no TensorFlow, no download, no training. ``risk`` is the mean of its six
  outputs (toxic, severe_toxic, obscene, threat, insult, identity_hate). It replaced the n-gram
  head as the default because it generalises to other platforms (``bench/quality_risk.py``).
- ``"ngram"``: the previous default, a linear head on hashed word and character n-grams, trained
  locally on labelled tweets (Davidson et al. 2017) plus clean prose (``models.risk_head``). It
  trains itself on first use (~20-60 s on 2 cores, cached under
  ``core.runtime.model_cache_dir("risk")``) and tags thousands of chunks per second.
- ``"detoxify"``: the production path, `detoxify <https://github.com/unitaryai/detoxify>`_ run
  from a local checkpoint (``checkpoint``, the ``.ckpt`` file) and the Hugging Face config and
  tokenizer folder of its base model (``huggingface_config_path``); its ``toxicity`` output is
  ``risk``. Runs on CUDA when present (``device = "auto"``).

Either way a document is cut into chunks of at most ``max_chars`` characters at sentence ends
and ``risk`` is the maximum over its chunks, so one toxic paragraph in a long document counts.

Columns: ``risk`` (float32 in [0, 1]), ``risk_flag`` (``risk >= threshold``; the default head's
thresholds keep the share of flagged literary paragraphs under 1 %) and ``risk_model`` (which
model scored it: ``lstm-<model>@<weights hash>``, ``ngram@<training hash>`` or
``detoxify@<checkpoint hash>``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from glia.core.runtime import check_device, file_stamps, hash_files
from glia.models import risk_head as risk_model
from glia.models import risk_lstm
from glia.models.detoxify import detoxify_scores, load_detoxify
from glia.taggers.base import Resources, Tagger

BACKENDS = ("default", "ngram", "detoxify")
DETOXIFY_MAX_CHARS = 1000  # ~250 word pieces: well inside BERT's 512 positions, a comment or two long
DETOXIFY_THRESHOLD = 0.5


# -- detoxify --------------------------------------------------------------------------------


_FILE_HASHES: dict[tuple[Any, ...], str] = {}


def files_hash(paths: list[Path]) -> str:
    """sha256 over files' names and contents (a folder: every file under it), cached per process
    while sizes and mtimes stay the same: the tags' cache key follows the weights themselves."""
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    stamp = file_stamps(files)
    if stamp not in _FILE_HASHES:
        h = hashlib.sha256()
        hash_files(h, ((f.name, f) for f in files))
        _FILE_HASHES[stamp] = h.hexdigest()[:16]
    return _FILE_HASHES[stamp]


# -- the tagger --------------------------------------------------------------------------------


class RiskTagger(Tagger):
    """``risk``: probability of toxicity (max over chunks); ``risk_flag``; ``risk_model``."""

    name: ClassVar[str] = "risk"
    # 2: the default backend became the packaged LSTM (1: the n-gram head, now backend "ngram").
    version: ClassVar[str] = "2"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=10_000)

    @dataclass(frozen=True)
    class Params:
        backend: Literal["default", "ngram", "detoxify"] = "default"
        threshold: float | None = None  # risk at or above which risk_flag is set (default: the backend's)
        max_chars: int | None = None  # chunk length; a document's risk is its worst chunk's
        checkpoint: str | None = None  # detoxify: the .ckpt file
        huggingface_config_path: str | None = None  # detoxify: the base model's config and tokenizer folder
        device: str = "auto"
        batch_size: int = 32
        models_dir: str | None = None  # ngram: where its trained head is cached
        lstm_model: str = risk_lstm.DEFAULT_MODEL  # default backend: which packaged LSTM

        def __post_init__(self) -> None:
            if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
                raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
            if self.max_chars is not None and self.max_chars < 20:
                raise ValueError(f"max_chars must be at least 20, got {self.max_chars!r}")
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be positive, got {self.batch_size!r}")
            if self.lstm_model not in risk_lstm.PACKAGES:
                raise ValueError(f"lstm_model must be one of {', '.join(risk_lstm.PACKAGES)}, got {self.lstm_model!r}")
            check_device(self.device)

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        backend, threshold, max_chars, checkpoint = p.backend, p.threshold, p.max_chars, p.checkpoint
        huggingface_config_path, device, batch_size, models_dir, lstm_model = (
            p.huggingface_config_path, p.device, p.batch_size, p.models_dir, p.lstm_model)
        self.requires = {"detoxify": ("torch", "detoxify"), "ngram": ("sklearn", "scipy"), "default": ("h5py",)}[backend]
        self.backend = backend
        self.lstm_model = lstm_model
        self.device = device
        self.batch_size = batch_size
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self.checkpoint = self.config_path = None
        if backend == "detoxify":
            if not checkpoint or not huggingface_config_path:
                raise ValueError(
                    "[taggers.risk] backend = \"detoxify\" needs checkpoint (the .ckpt file) and huggingface_config_path "
                    "(the folder with the base model's config.json and tokenizer files): nothing is downloaded at run time"
                )
            self.checkpoint = Path(checkpoint).expanduser().resolve()
            self.config_path = Path(huggingface_config_path).expanduser().resolve()
            # ValueError, not FileNotFoundError: the rules-file check reports it as a configuration error.
            if not self.checkpoint.is_file():
                raise ValueError(f"[taggers.risk] checkpoint {self.checkpoint} is not a file")
            if not (self.config_path / "config.json").is_file():
                raise ValueError(f"[taggers.risk] huggingface_config_path {self.config_path} has no config.json")
            # An instance attribute: only this backend benefits from a GPU and wants smaller slices.
            self.resources = Resources(gpu=True, batch_size=2_000)  # type: ignore[misc]
            self.threshold = DETOXIFY_THRESHOLD if threshold is None else threshold
            self.max_chars = DETOXIFY_MAX_CHARS if max_chars is None else max_chars
        elif backend == "ngram":
            recipe = risk_model.Recipe()
            self.threshold = recipe.threshold if threshold is None else threshold
            self.max_chars = recipe.max_chars if max_chars is None else max_chars
        else:
            risk_lstm.package_dir(*reversed(risk_lstm.PACKAGES[lstm_model][:2]))  # not installed: say how, now
            self.threshold = risk_lstm.DEFAULT_THRESHOLD if threshold is None else threshold
            self.max_chars = risk_lstm.DEFAULT_MAX_CHARS if max_chars is None else max_chars

    def model_id(self) -> str:
        """``lstm-<model>@<hash of its weights and tokenizer>``, ``ngram@<hash of training data, recipe,
        code>`` or ``detoxify@<hash of checkpoint and config>``."""
        if self.backend == "detoxify":
            return f"detoxify@{files_hash([self.checkpoint, self.config_path])}"
        if self.backend == "ngram":
            return f"ngram@{risk_model.head_dir(self.models_dir).name.removeprefix('head-')}"
        return f"lstm-{self.lstm_model}@{files_hash(risk_lstm.load(self.lstm_model).files())}"

    def config(self) -> dict[str, object]:
        return {"backend": self.backend, "model": self.model_id(), "threshold": self.threshold, "max_chars": self.max_chars}

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("risk", pa.float32()), ("risk_flag", pa.bool_()),
                          ("risk_model", pa.string())])

    def scores(self, text: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """``risk`` per text: the largest chunk probability (float32 in [0, 1])."""
        if self.backend == "default":
            return risk_lstm.load(self.lstm_model).score(text, self.max_chars)
        if self.backend == "ngram":
            return risk_model.load_default(self.models_dir).score(text, self.max_chars)
        from glia.core.runtime import pick_device

        det, lock = load_detoxify(self.checkpoint, self.config_path, pick_device(self.device))
        chunks, owner = risk_model.chunk(text, self.max_chars)
        return risk_model.max_by_owner(detoxify_scores(det, lock, chunks.to_pylist(), self.batch_size), owner, len(text))

    def tag(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        risk = self.scores(batch.column("text")) if n else np.empty(0, np.float32)
        risk = np.clip(risk.astype(np.float32), 0.0, 1.0)
        return pa.table({
            "doc_id": batch.column("doc_id"),
            "risk": pa.array(risk, pa.float32()),
            "risk_flag": pa.array(risk >= self.threshold, pa.bool_()),
            "risk_model": pa.repeat(pa.scalar(self.model_id(), pa.string()), n),
        }, schema=self.schema())
