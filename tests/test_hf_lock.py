"""Model loaders on parallel threads: each imports transformers only while holding the one
process-wide lock (``models.hf.LOCK``). transformers' lazy top-level imports are not
thread-safe: the demo's fourth night failed with ``cannot import name 'AutoModelForCausalLM'``
when the LM and the risk model's MiniLM loaded at once on two shard threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LOADERS = {
    "risk MiniLM": "from glia.models import risk_minilm; risk_minilm.load_base('cpu')",
    "scoring LM": "from glia.models.lm import load_scoring_model; load_scoring_model(device='cpu')",
}


@pytest.mark.parametrize("loader", ["risk MiniLM", "scoring LM"])
def test_a_loader_waits_for_the_lock_before_importing_transformers(loader: str) -> None:
    """With the lock held by another thread, a loader on its own thread has not started to
    import transformers; once the lock is free it loads."""
    code = textwrap.dedent(f"""
        import sys, threading, time
        from glia.models import hf
        done = threading.Event()
        def load():
            {LOADERS[loader]}
            done.set()
        with hf.LOCK:
            t = threading.Thread(target=load)
            t.start()
            time.sleep(1.0)
            assert "transformers" not in sys.modules, "imported transformers without the lock"
        t.join(300)
        assert done.is_set()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-2000:]
