# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Each creates .venv when missing and installs the project with torch pinned by constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,ray,hf,trainer,lightning
OUT ?= atlas

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@# backpack (pulled in by curvlinops) drags in torchvision, which cannot load beside this torch
	@# build; nothing here needs it, and curvlinops works without it.
	$(BIN)/python -m pip uninstall -y -q torchvision 2>/dev/null || true
	touch $(STAMP)

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed: the browser test will be skipped"

demo: $(STAMP)
	$(BIN)/lossatlas demo --out $(OUT)

test: $(STAMP) browser
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
