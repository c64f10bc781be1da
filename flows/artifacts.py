"""The run summary as a Prefect artifact: a Markdown table on the flow run's page."""

from __future__ import annotations

import logging
from pathlib import Path

from glia.curation.summary import read_summary, to_markdown
from glia.storage.catalog import Catalog

ARTIFACT_KEY = "glia-run-summary"
log = logging.getLogger(__name__)


def summary_markdown(db_path: Path, run_id: int) -> str | None:
    """The committed run's summary as Markdown, read from the catalog (read-only)."""
    with Catalog(db_path, read_only=True) as cat:
        summary = read_summary(cat.con, run_id)
    return None if summary is None else to_markdown(summary, db_path)


def publish_summary(db_path: Path, run_id: int) -> str | None:
    """Attach run ``run_id``'s summary to the current Prefect flow run (artifact key
    ``glia-run-summary``, so the nights line up as versions of one artifact); return its id.

    The night is already committed when this runs: a failure here is logged, never raised,
    so it cannot turn a good night into a failed flow run.
    """
    from prefect.artifacts import create_markdown_artifact

    try:
        markdown = summary_markdown(db_path, run_id)
        if markdown is None:
            return None
        artifact_id = create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                                               description=f"Glia run {run_id}: counts per source, tag and decision")
        return str(artifact_id)
    except Exception as exc:  # the summary is derived data; the night's data is safe in the catalog
        log.warning("glia: could not publish the summary of run %s as a Prefect artifact: %s", run_id, exc)
        return None

