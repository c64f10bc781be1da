"""``glia models train-risk``: build model artefacts ahead of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "models"
HELP = "build model artefacts ahead of a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_cmd", required=True)
    train_risk = sub.add_parser("train-risk", help="train the risk tagger's n-gram toxicity head (backend \"ngram\"; the default ships trained)")
    train_risk.add_argument("--out", type=Path, help="folder for the head (default: the model cache, .glia/models/risk)")
    train_risk.add_argument("--force", action="store_true", help="retrain even if the head for the current data exists")


def run(args: argparse.Namespace, console: Console) -> int:
    """Build the risk tagger's n-gram head (backend "ngram") now and report its held-out numbers."""
    from glia.models import risk_head

    head, folder, trained = risk_head.ensure(args.out, force=args.force)
    ev = risk_head.evaluate(head)
    done = "trained" if trained else "already built (--force retrains)"
    console.print(f"risk head {head.key} in {folder}: {done}; training took {head.info['train_seconds']:.1f} s "
                  f"({head.info['n_tweets']} tweets, {head.info['n_prose_chunks']} prose chunks)", markup=False)
    console.print(f"held out: ROC-AUC {ev['roc_auc_davidson_test']:.4f} on {ev['n_davidson_test']} Davidson test tweets; "
                  f"at threshold {ev['threshold']}: {ev['tweet_tpr']:.1%} of toxic tweets and {ev['prose_fpr']:.2%} of "
                  f"{ev['n_prose_heldout']} literary paragraphs flagged")
    if args.out:
        console.print(f"use it with [taggers.risk] models_dir = \"{args.out}\"", markup=False)
    return EXIT_OK
