# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LAKE    := $(VENV)/bin/lake
STAMP   := $(VENV)/.installed
DATA    ?= $(abspath ../shared/data)
DEMO    ?= .demo
PYTEST_ARGS ?= --durations=25
STARTED := $(shell date +%s)

export LAKE_DATA_DIR ?= $(DATA)
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_AUTH_MODE ?= disabled

.PHONY: venv demo test lint clean bench browser

venv: $(STAMP)

# torch first: pinned to the CPU build where no GPU is present (a looser pin pulls a multi-GB CUDA build)
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q "torch>=2.4"; else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(LAKE) init $(DEMO)
	$(LAKE) --config $(DEMO)/lake.toml import mc $(DATA)/eval/cmmlu/dev/*.csv --table eval.cmmlu_dev
	$(LAKE) --config $(DEMO)/lake.toml import mc $(DATA)/eval/cmmlu/dev/*.csv $(DATA)/eval/cmmlu/test/a*.csv --table eval.cmmlu
	$(LAKE) --config $(DEMO)/lake.toml import sft $(DATA)/sft/*.json $(DATA)/sft/belle/*.json* --table sft.examples
	$(LAKE) --config $(DEMO)/lake.toml import preference $(DATA)/preference/*.json* --table pref.pairs
	$(LAKE) --config $(DEMO)/lake.toml import text $(DATA)/text/*.txt $(DATA)/text/*.jsonl --table text.corpus
	$(LAKE) --config $(DEMO)/lake.toml ingest warc $(DATA)/warc/*.warc.gz --recipe $(DEMO)/recipes/web.yaml
	$(LAKE) --config $(DEMO)/lake.toml dedup web.documents
	$(LAKE) --config $(DEMO)/lake.toml train tokenizer --table text.corpus --vocab-size 8000 --name lake-tok \
		--eval zh="input_uri LIKE '%peoples_daily%'" --eval en="input_uri LIKE '%c4_demo%'"
	$(LAKE) --config $(DEMO)/lake.toml train pretrain $(DEMO)/train/reference.yaml
	$(LAKE) --config $(DEMO)/lake.toml train quality-classifier --name quality \
		--positive "SELECT text FROM text.corpus WHERE input_uri NOT LIKE '%c4_demo%'" \
		--positive "SELECT m.content AS text FROM (SELECT array_get(messages, 2) AS m FROM sft.examples)" \
		--negative "SELECT text FROM web.documents" --negative "SELECT text FROM text.corpus WHERE input_uri LIKE '%c4_demo%'"
	$(LAKE) --config $(DEMO)/lake.toml label quality web.documents --model models:/quality/1
	$(LAKE) --config $(DEMO)/lake.toml label ppl web.documents --model models:/ref-lm/1
	$(LAKE) --config $(DEMO)/lake.toml query "SELECT lang, ppl_bucket, count(*) AS docs, round(avg(quality_score), 3) AS quality FROM web.documents__labels WHERE dup_keep GROUP BY 1, 2 ORDER BY 1, 2"
	$(LAKE) --config $(DEMO)/lake.toml mix $(DEMO)/train/mix.yaml
	$(LAKE) --config $(DEMO)/lake.toml train pretrain $(DEMO)/train/pretrain.yaml
	$(LAKE) --config $(DEMO)/lake.toml train sft $(DEMO)/train/sft.yaml
	$(LAKE) --config $(DEMO)/lake.toml train reward $(DEMO)/train/reward.yaml
	$(LAKE) --config $(DEMO)/lake.toml eval models:/tiny-rm/1 --suite pairs --pairs-table pref.pairs \
		--where "input_uri LIKE '%helpful%'"
	$(LAKE) --config $(DEMO)/lake.toml train bon $(DEMO)/train/bon.yaml
	$(LAKE) --config $(DEMO)/lake.toml train dpo $(DEMO)/train/dpo.yaml
	$(LAKE) --config $(DEMO)/lake.toml train ppo $(DEMO)/train/ppo.yaml
	$(LAKE) --config $(DEMO)/lake.toml eval models:/tiny-ppo/1 --suite ppl,mc,judge --limit 20 \
		--table text.corpus --slice zh="input_uri LIKE '%peoples_daily%'" --slice en="input_uri LIKE '%c4_demo%'" \
		--mc-table eval.cmmlu --subjects agronomy,anatomy,astronomy \
		--baseline models:/tiny-chat/1 --reward-model models:/tiny-rm/1 --where "source_format = 'belle'" --max-new-tokens 32
	$(LAKE) --config $(DEMO)/lake.toml eval models:/tiny-chat/1 --suite ppl,mc --limit 20 \
		--table text.corpus --slice zh="input_uri LIKE '%peoples_daily%'" --slice en="input_uri LIKE '%c4_demo%'" \
		--mc-table eval.cmmlu --subjects agronomy,anatomy,astronomy
	$(LAKE) --config $(DEMO)/lake.toml query "SELECT lang, count(*) AS docs, sum(CASE WHEN gopher_reason IS NULL THEN 1 ELSE 0 END) AS gopher_ok FROM web.documents GROUP BY lang ORDER BY docs DESC"
	$(LAKE) --config $(DEMO)/lake.toml summary --model models:/tiny-ppo/1 --started $(STARTED)

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian's headless Chromium and its driver for the MLflow UI test (nothing downloaded by Selenium)
CHROMIUM := /usr/bin/chromium /usr/bin/chromedriver
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@for f in $(CHROMIUM); do [ -x $$f ] || missing=1; done; [ -z "$$missing" ] && exit 0; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make test needs Debian's chromium and chromium-driver ($(CHROMIUM)); install them" >&2; exit 1; fi; \
	echo "installing chromium and chromium-driver with apt-get"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	{ $(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	{ echo "could not install chromium and chromium-driver with apt-get (needed by the MLflow UI test)" >&2; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) tests/benchmarks/extraction.py
	$(PY) tests/benchmarks/curation.py --pages 6000 --files 8
	$(PY) tests/benchmarks/dedup.py
	$(PY) tests/benchmarks/pretrain.py
	$(PY) tests/benchmarks/labels.py
	$(PY) tests/benchmarks/posttrain.py
	$(PY) tests/benchmarks/eval.py
	$(PY) tests/benchmarks/scale.py

clean:
	rm -rf $(DEMO) lakehouse
