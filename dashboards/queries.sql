-- Ready-made inspection queries over a Glia catalog. Run one with
--   .venv/bin/glia sql "$(sed -n '/-- name: latest_run/,/;/p' dashboards/queries.sql)" --db glia.duckdb
-- or paste into any DuckDB client opened read-only on the database file.

-- name: latest_run
SELECT * FROM v_runs ORDER BY run_id DESC LIMIT 1;

-- name: duplicates_per_night: how much each night repeats earlier ones
SELECT first_seen_run AS run_id, kind,
       count(*) FILTER (WHERE survivor_first_seen_run < first_seen_run) AS of_earlier_nights,
       count(*) FILTER (WHERE survivor_first_seen_run = first_seen_run) AS within_the_night
FROM v_duplicates GROUP BY ALL ORDER BY ALL;

-- name: biggest_clusters: the most repeated texts, with their survivor
SELECT cluster_id AS survivor_id, max(cluster_size) AS size, count(*) AS duplicates_listed
FROM v_duplicates GROUP BY 1 ORDER BY size DESC LIMIT 20;

-- name: duplicates_per_source
SELECT d.source, count(*) AS docs, count(x.doc_id) AS duplicates,
       round(100.0 * count(x.doc_id) / count(*), 1) AS pct
FROM v_documents d LEFT JOIN v_duplicates x USING (doc_id) GROUP BY 1 ORDER BY pct DESC;

-- name: skipped_and_rejected: bad input, by file and row
SELECT run_id, path, "row", doc_id, reason FROM v_skipped ORDER BY run_id DESC, path, "row";
