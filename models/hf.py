"""One process-wide lock for importing and loading Hugging Face models.

transformers resolves its top-level names lazily, and two threads that import from it for the
first time at once can see a half-initialised submodule: ``ImportError: cannot import name
'AutoModelForCausalLM' from 'transformers'``. A night loads its model taggers on parallel shard
threads (sentence embeddings, the scoring LM, the risk model's MiniLM), so every loader that
imports transformers or sentence-transformers does it, and builds its model, while holding
:data:`LOCK`. Reentrant: a loader may call another.
"""

from __future__ import annotations

import threading

LOCK = threading.RLock()
