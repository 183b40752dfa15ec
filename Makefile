# showwork: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= demo
TIER ?= cpu

.PHONY: install demo test test-containers test-learning test-fast lock clean kind-demo configure

install: $(VENV)/.installed

# Install exactly the lock, then our package without touching its pins.
$(VENV)/.installed: lib/requirements-dev.lock lib/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r lib/requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e lib
	touch $@

# The embedded default: the whole pipeline on this machine, report under runs/$(RECIPE)/report/.
# SEED=N: the same recipe with sft.seed and grpo.seed N (data order, LoRA init, sampling; the data and
# held-out questions stay the recipe's), run as runs/<recipe>-seedN; pool seeds with jobs.seeds.
demo: install
ifdef SEED
	@mkdir -p runs && printf 'sft: {seed: %s}\ngrpo: {seed: %s}\n' $(SEED) $(SEED) > runs/seed-$(SEED).yaml
	$(BIN)/python -m jobs.pipeline k8s/base/recipes/$(RECIPE).yaml k8s/components/$(TIER)/tier.yaml \
		runs/seed-$(SEED).yaml --run-id $(RECIPE)-seed$(SEED)
else
	$(BIN)/python -m jobs.pipeline k8s/base/recipes/$(RECIPE).yaml k8s/components/$(TIER)/tier.yaml
endif

# Two test processes by default: one process keeps only about one of two cores busy (JAX on small
# programs is mostly compile and dispatch), two halve the wall time. Each loads its own models, so
# raise TEST_WORKERS only with the memory for it (about 6 GB each at the suite's peak).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

# Three suites, three CI steps with their own budgets (.ci/run runs all three):
#   test             everything but the two below (the recipe x tier matrix included)
#   test-containers  builds the four images and runs them as the pods run (needs a container engine)
#   test-learning    trains the real Gemma 3 270M until it measurably learns
# The 30 slowest tests close each report: where the suite's time goes.
SUITES := not containers and not learning
test: install
	$(PYTEST) --durations=30 -m "$(SUITES)"

test-containers: install
	$(PYTEST) --durations=10 -m containers

test-learning: install
	$(PYTEST) --durations=10 -m learning

test-fast: install
	$(PYTEST) -m "not slow and $(SUITES)"

# Re-resolve the locks from lib/pyproject.toml in a throwaway virtualenv: the dev lock (what CI and
# `make install` use) and, from it, the runtime lock the images install (no test or lint tools).
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet --upgrade pip
	$(VENV)-lock/bin/pip install --quiet -e "lib[cpu,dev]"
	$(VENV)-lock/bin/pip freeze --exclude-editable | grep -v '^showwork' > lib/requirements-dev.lock
	$(VENV)-lock/bin/python scripts/runtime_lock.py lib/requirements-dev.lock > lib/requirements.lock
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) runs

# Local cluster: kind + JobSet + images + the demo overlay (needs docker and kind).
kind-demo:
	scripts/kind-demo.sh demo-cpu

# Your GKE site: PROJECT, BUCKET (the bus), optional MODELS_BUCKET, REGISTRY and TAG written over every
# shipped GKE overlay into k8s/site/<overlay> (scripts/configure.py); then kubectl apply -k k8s/site/<overlay>.
configure: install
	$(BIN)/python scripts/configure.py --project "$(PROJECT)" --bucket "$(BUCKET)" \
	  $(if $(MODELS_BUCKET),--models-bucket "$(MODELS_BUCKET)") $(if $(REGISTRY),--registry "$(REGISTRY)") \
	  $(if $(TAG),--tag "$(TAG)")
