"""The tiny byte-level LM and replay plumbing shared by ``bench/ablate.py`` and ``bench/forgetting.py``.

A byte-level causal transformer (nothing from a hub; 2 layers, width 128, context 128 by
default), its windowed loss, a fixed-window evaluation grouped by any column, the training
loop that mixes ``batch_new`` windows of new documents with ``batch_replay`` replayed ones
(each replayed loss optionally scaled by its importance-sampling weight), and the read-only
"what-if" replay builds that the benchmarks compare with the nightly stage's own set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Budget:
    """Training budget. Both arms get exactly the same steps and replay draws."""

    night1_steps: int
    night_steps: int  # per later night, per arm
    batch_new: int
    batch_replay: int
    ctx: int = 128
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    lr: float = 2e-3
    warmup: int = 30
    eval_windows: int = 3  # per held-out document (its first eval_windows * ctx bytes)
    # "constant": linear warm-up over the first ``warmup`` steps of the whole run, then ``lr``.
    # "cosine": each phase (a night) warms up over its own first ``warmup`` steps and decays to
    # ``min_lr_ratio * lr`` by its end: the re-warm and re-decay that Ibrahim et al. (2024)
    # recommend for continual pre-training, which also lets night 1 settle at a stable loss.
    schedule: str = "constant"
    min_lr_ratio: float = 0.1


def learning_rate(b: Budget, step: int, phase: tuple[int, int]) -> float:
    """The learning rate at global ``step`` of a phase ``(first step, steps)`` under ``b.schedule``."""
    import math

    if b.schedule == "constant":
        return b.lr * min(1.0, (step + 1) / b.warmup)
    if b.schedule != "cosine":
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {b.schedule!r}")
    s = step - phase[0]
    decay = b.min_lr_ratio + (1 - b.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, phase[1]))))
    return b.lr * min(1.0, (s + 1) / b.warmup) * decay


def make_model(b: Budget) -> Any:
    import torch
    from torch import nn

    class TinyLM(nn.Module):
        """A byte-level causal transformer."""

        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(256, b.d_model)
            self.pos = nn.Embedding(b.ctx, b.d_model)
            layer = nn.TransformerEncoderLayer(b.d_model, b.heads, 4 * b.d_model, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, b.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(b.d_model)
            self.head = nn.Linear(b.d_model, 256)
            self.register_buffer("mask", torch.triu(torch.full((b.ctx, b.ctx), float("-inf")), 1))

        def forward(self, x: Any) -> Any:
            t = x.shape[1]
            h = self.emb(x) + self.pos(torch.arange(t, device=x.device))
            return self.head(self.norm(self.blocks(h, mask=self.mask[:t, :t], is_causal=True)))

    return TinyLM()


def windows(texts: list[str], rng: np.random.Generator, ctx: int) -> np.ndarray:
    """One random window of ``ctx + 1`` bytes per text (shorter texts are padded with byte 0,
    which the loss ignores through the length mask below)."""
    out = np.zeros((len(texts), ctx + 1), np.int64)
    lengths = np.zeros(len(texts), np.int64)
    for i, t in enumerate(texts):
        raw = np.frombuffer(t.encode("utf-8"), np.uint8)
        start = int(rng.integers(0, max(1, len(raw) - ctx))) if len(raw) > ctx + 1 else 0
        w = raw[start:start + ctx + 1]
        out[i, :len(w)] = w
        lengths[i] = len(w)
    return np.concatenate([out, lengths[:, None]], axis=1)


def window_losses(model: Any, batch: np.ndarray) -> Any:
    """Mean next-byte loss (nats) of each window, ignoring padding."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(batch[:, :-1])
    lengths = torch.from_numpy(batch[:, -1])
    logits = model(x[:, :-1])
    nll = F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1), reduction="none").view(x.shape[0], -1)
    valid = (torch.arange(nll.shape[1])[None, :] < (lengths[:, None] - 1)).float()
    return (nll * valid).sum(1) / valid.sum(1).clamp(min=1), valid.sum(1)


def eval_set(model: Any, table: pa.Table, b: Budget, group: str = "source") -> dict[str, Any]:
    """Loss on fixed windows (each document's first ``eval_windows`` windows): per value of the
    ``group`` column (``per_source``), micro (per byte) and macro (mean over groups)."""
    import torch

    rows, sources = [], []
    for text, src in zip(table["text"].to_pylist(), table[group].to_pylist()):
        raw = np.frombuffer(text.encode("utf-8"), np.uint8)
        for k in range(b.eval_windows):
            w = raw[k * b.ctx:(k + 1) * b.ctx + 1]
            if len(w) < 2:
                break
            row = np.zeros(b.ctx + 2, np.int64)
            row[:len(w)] = w
            row[-1] = len(w)
            rows.append(row)
            sources.append(src)
    data = np.stack(rows)
    model.eval()
    losses, counts = [], []
    with torch.no_grad():
        for i in range(0, len(data), 64):
            lo, n = window_losses(model, data[i:i + 64])
            losses.append(lo.numpy())
            counts.append(n.numpy())
    model.train()
    lo, n = np.concatenate(losses), np.concatenate(counts)
    src = np.asarray(sources, dtype=object)
    per = {s: float(np.sum(lo[src == s] * n[src == s]) / np.sum(n[src == s])) for s in sorted(set(sources))}
    return {"micro": float(np.sum(lo * n) / n.sum()), "macro": float(np.mean(list(per.values()))), "per_source": per,
            "documents": table.num_rows, "windows": len(data)}


def train(model: Any, opt: Any, b: Budget, steps: int, new_texts: list[str], replay: list[dict[str, Any]] | None,
          seed: int, night: int, use_weights: bool, step0: int,
          phase: tuple[int, int] | None = None) -> dict[str, float]:
    """``steps`` optimizer steps of ``batch_new`` new windows (+ ``batch_replay`` replayed ones, each
    loss scaled by its IS weight when ``use_weights``), from global step ``step0`` of the phase
    ``(first step, steps)`` (default: these steps) that the learning-rate schedule follows. The new
    windows depend only on ``(seed, night)``, so every arm with the same ``batch_new`` sees
    exactly the same new data.
    Returns the seconds, the mean loss of the new windows and ``tokens``: the predicted bytes
    trained on (padding excluded), which is how the benchmarks check equal budgets."""
    import torch

    rng_new = np.random.default_rng([seed, night, 1])
    rng_rep = np.random.default_rng([seed, night, 2])
    t0, total, tokens = time.monotonic(), 0.0, 0
    phase = phase or (step0, steps)
    for step in range(steps):
        lr = learning_rate(b, step0 + step, phase)
        for g in opt.param_groups:
            g["lr"] = lr
        pick = rng_new.integers(0, len(new_texts), b.batch_new)
        texts = [new_texts[i] for i in pick]
        weights = [1.0] * len(texts)
        if replay is not None:
            items = replay[step * b.batch_replay:(step + 1) * b.batch_replay]
            texts += [it["text"] for it in items]
            weights += [it["weight"] if use_weights else 1.0 for it in items]
        batch = windows(texts[:b.batch_new], rng_new, b.ctx)
        if len(texts) > b.batch_new:
            batch = np.concatenate([batch, windows(texts[b.batch_new:], rng_rep, b.ctx)])
        lo, valid = window_losses(model, batch)
        tokens += int(valid.sum())
        loss = (lo * torch.tensor(weights, dtype=lo.dtype)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total += float(lo[:b.batch_new].detach().mean())
    return {"seconds": round(time.monotonic() - t0, 2), "mean_new_loss": total / max(1, steps), "tokens": tokens}


def whatif_plan(db: Path, params: Any) -> tuple[Any, dict[str, Any]]:
    """Draws of a replay set built from the catalog as it stands (read-only: nothing is written,
    retention state included), for the arms that are not the nightly stage's own set."""
    from glia.curation.dataloader import ReplayPlan
    from glia.curation.replay import build_set, pool_from_catalog
    from glia.storage.catalog import Catalog
    from glia.storage.replay import latest_run, read_replay_catalog
    from glia.storage.sql import registered

    with Catalog(db, read_only=True) as cat:
        run_id = latest_run(cat.con)
        st = read_replay_catalog(cat.con, params)
        rs = build_set(pool_from_catalog(st, run_id), st.state, params, 0, st.n_sets, "api")
        with registered(cat.con, "_items", rs.items):
            rows = cat.con.sql('SELECT i.doc_id, i.weight, i."count", d.shard_path, d."row" '
                               "FROM _items i JOIN documents d USING (doc_id)").to_arrow_table()
    return ReplayPlan.from_rows(rows, 0), rs.set_row


def learner_losses(model: Any, texts: dict[str, str], b: Budget, path: Path) -> Path:
    """The model's loss on each earlier document (its first window), written as Parquet for the
    replay build's ``importance_sql``: the trainer tells Glia what it finds hard."""
    import torch

    ids = sorted(texts)
    losses = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ids), 64):
            chunk = [texts[d] for d in ids[i:i + 64]]
            rows = np.zeros((len(chunk), b.ctx + 2), np.int64)
            for j, t in enumerate(chunk):
                w = np.frombuffer(t.encode("utf-8"), np.uint8)[:b.ctx + 1]
                rows[j, :len(w)] = w
                rows[j, -1] = len(w)
            losses.append(window_losses(model, rows)[0].numpy())
    model.train()
    pq.write_table(pa.table({"doc_id": ids, "loss": np.concatenate(losses)}), path)
    return path
