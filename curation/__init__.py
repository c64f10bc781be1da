"""Glia: nightly data hygiene for training corpora. The domain: config, shards, dedup, runs."""

__version__ = "0.1.0"
