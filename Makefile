# Developer shortcuts. The README's two commands need none of this.
PY ?= .venv/bin/python

.PHONY: help venv test soak lint fmt bench bench-100k run demo clean

help:
	@echo "make venv   - create .venv with tag-watchdog and its test dependencies"
	@echo "make test   - install what the suite needs and run it (same as ./scripts/test)"
	@echo "make soak   - the longer crash runs of docs/RELIABILITY.md: 120 SIGKILLs each (~6 min)"
	@echo "make lint   - ruff, mypy (strict), import-linter"
	@echo "make fmt    - ruff format + ruff check --fix"
	@echo "make bench  - scan benchmarks against a local registry (bench/, docs/PERFORMANCE.md)"
	@echo "make bench-100k - peak RSS and tags/s of \`tag-watchdog scan\` at 100,000 tags (~15 min)"
	@echo "make run    - run the daemon on config.example.yaml"
	@echo "make demo   - replay the overwritten-release story offline and watch it put back"

venv:
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -e '.[test]'
	test -x .venv-lint/bin/python || python3 -m venv .venv-lint
	.venv-lint/bin/python -m pip install -q -r scripts/lint-requirements.txt

test:
	./scripts/test

# The suite's crash test kills the daemon 8/12 times on SQLite and 4/6 on PostgreSQL (webhook/bot);
# these are the "longer run" rows of docs/RELIABILITY.md (in one process: -s shows the seeds)
# (WATCHDOG_CRASH_SEED=N replays one, WATCHDOG_CRASH_OUT=f.json keeps the figures).
SOAK_KILLS ?= 120
soak: venv
	WATCHDOG_CRASH_KILLS=$(SOAK_KILLS) $(PY) -m pytest -q -s tests/system/test_crash.py -k sqlite

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	PYTHONPATH="$(CURDIR)" .venv-lint/bin/lint-imports

fmt: venv
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: venv
	$(PY) -m bench.scan_bench --tags 1000 --rounds 3
	$(PY) -m bench.fleet_bench

bench-100k: venv
	$(PY) -m bench.scale_bench --repos 1000 --tags 100 --rounds 1

run: venv
	.venv/bin/tag-watchdog run -c config.example.yaml

demo: venv
	$(PY) scripts/demo.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
