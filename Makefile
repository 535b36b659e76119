# `make test` on a fresh clone: create .venv, install the CPU flavour (torch 2.13.0 first, held by a
# constraints file so nothing pulls a CUDA build), install the packaged assets, lint, then run every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip compiles every module one by one; compileall does it on both cores after the installs (79 s instead of 109 s
# on a fresh clone here). The .pyc files must exist: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# process would otherwise compile torch, transformers and verl again at each import.
INSTALL := $(PY) -m pip --disable-pip-version-check install -q --no-compile
STAMP := $(VENV)/.grace-installed

.PHONY: install lint test demo study grpo-rm

install: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/constraints-cpu.txt requirements/assets.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(INSTALL) torch==2.13.0
	$(INSTALL) -r requirements/cpu.txt -c requirements/constraints-cpu.txt
	$(INSTALL) --no-deps -r requirements/assets.txt
	$(INSTALL) --no-deps -e .
	$(PY) -m compileall -qq -j 2 -x 'py312_intrinsics' $(VENV)/lib  # that torch test file is Python 3.12 syntax
	touch $(STAMP)

# ruff's checks (pyproject.toml) before any test: a lint error fails CI as a failing test does.
lint: install
	$(PY) -m ruff check .

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
# Two workers, one per core, each taking the next test file as it frees up; the 15 slowest tests are listed at the end.
test: lint
	$(PY) -m pytest -n 2 --dist loadfile --durations=15; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$status

# The whole pipeline on the CPU with the packaged SmolLM2 and Wikipedia data; report in demo_out/.
# The ~2-hour setting: make demo DEMO_ARGS="--preset full"; any flag: make demo DEMO_ARGS="--steps 40"
demo: install
	$(PY) -m grace.demo $(DEMO_ARGS)

# A study: named arms (base model, contrastive baseline, GRACE settings) on the same data and held-out items, with
# paired bootstrap intervals; report in study_out/<name>/. Re-running skips finished arms and resumes training.
STUDY ?= studies/first.yaml
study: install
	$(PY) -m grace.study $(STUDY) $(STUDY_ARGS)

# GRPO-RM against standard fine-tuning (frozen, CE, GRPO-RM with each uniformity) on the packaged MiniLM and
# Wikipedia topics: lr chosen on dev, 3 seeds; report, results.json and accuracy.png in grpo_rm_out/ (resumable).
grpo-rm: install
	$(PY) -m grace.grpo_rm.compare $(GRPO_RM_ARGS)
