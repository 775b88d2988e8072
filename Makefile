# Two commands do all the set-up on a fresh machine:
#   make demo   runs the main job, the tiny end-to-end pipeline, on this machine (no cluster needed)
#   make test   installs what the tests need (venv, Slurm, munge, MariaDB) and runs them all
# Both are idempotent and quick when already done.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Reinstall only when the dependency list or the pins change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: demo demo-data test test-nemo venv slurm-install slurm-up slurm-down container-bundle clean gpu-wheels gpu-check
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@# Bytecode, as a wheel install has: every task of an array would otherwise compile aistack
	@# (where PYTHONDONTWRITEBYTECODE is set, each time).
	@$(BIN)/python -m compileall -q lib jobs >/dev/null
	@rm -f $(VENV)/.installed-* && touch $@

# The main job: the tiny end-to-end pipeline (WARC -> filter -> dedup -> tokenize -> pretrain
# -> SFT -> distill -> evaluate -> FP8 bench -> report) on this machine, no cluster.
demo: venv demo-data
	$(BIN)/aistack run recipes/pipelines/tiny-end-to-end.yaml --on local

# Its inputs, made here: a sample crawl of Debian's HTML documentation, and SFT chat records.
demo-data: venv
	@test -d /usr/share/doc/python3-doc/html || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-doc)
	@$(BIN)/python -m aistack.data.sample_crawl data/sample-crawl
	@$(BIN)/python -m aistack.post.reverse_task data/reverse-task

slurm-install:
	@bash slurm/install.sh

# The fast unit layer first (about a minute), then everything else against the local Slurm
# cluster, in two lanes: the cluster's tests in order in one, the others beside them
# (tests/conftest.py). Set-up runs side by side where it can: pip (venv) beside apt (slurm-install), then
# the OCI bundle (minutes once, then cached) beside the unit layer, its log printed after. The
# container tests and the tiny pipeline on Slurm run in the bundle, and fail rather than skip
# without it.
BUNDLE_LOG := containers/build/make-bundle.log
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target venv slurm-install
	@mkdir -p $(dir $(BUNDLE_LOG))
	@$(MAKE) --no-print-directory container-bundle >$(BUNDLE_LOG) 2>&1 & bundle=$$!; \
	  $(BIN)/python -m pytest tests/unit -n 2 $(PYTEST_ARGS); unit=$$?; \
	  wait $$bundle; built=$$?; cat $(BUNDLE_LOG); \
	  [ $$built = 0 ] || { echo "make container-bundle failed (its log above)" >&2; exit $$built; }; \
	  [ $$unit = 0 ] || [ $$unit = 5 ]  # 5: PYTEST_ARGS selected none here
	AISTACK_OCI_REQUIRED=1 $(BIN)/python -m pytest tests --ignore=tests/unit -n 2 --dist loadgroup $(PYTEST_ARGS)

# aistack against the real nemo-toolkit 2.7.3, both ways (tests/test_nemo_interop.py). NeMo pins
# numpy<2 and transformers 4.57: it gets a venv of its own, .venv-nemo (2-4 min, 2.9 GB).
test-nemo: venv
	PYTHON=$(PYTHON) bash nemo_interop/build-venv.sh
	$(BIN)/python -m pytest tests/test_nemo.py tests/test_nemo_interop.py $(PYTEST_ARGS)

slurm-up: slurm-install
	bash slurm/up.sh

slurm-down:
	bash slurm/down.sh

# The OCI bundle the local cluster runs containerized jobs in (`container_runtime: oci`,
# slurm/clusters/local-oci.yaml): a Debian bookworm root file system with aistack and its
# dependencies at the venv's versions, in containers/build/aistack-oci. Cached: only what
# changed is rebuilt (the base when the venv's pins change, aistack when its sources do).
container-bundle: venv slurm-install
	$(SUDO) env VENV_PYTHON=$(CURDIR)/$(BIN)/python bash containers/oci/build.sh

# The GPU check (README "GPU check"). Here, with the index: `make gpu-wheels` downloads, for
# Python 3.12, what the GPU image lacks at the versions .venv runs. On the machine with one
# NVIDIA GPU (Python 3.12, PyTorch with CUDA, no index): `make gpu-check` stops at once without
# a GPU, installs gpu-wheels/ into .gpu-site/ (once per wheel set), then runs the check.
GPU_WHEELS ?= gpu-wheels
GPU_SITE   ?= .gpu-site
# No section starts after 7.5 minutes: the check fits a 10-minute command with its set-up.
GPU_CHECK_ARGS ?= --time-limit 450

gpu-wheels: venv
	@rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/pip download -q --disable-pip-version-check -c constraints.txt --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -d $(GPU_WHEELS) $$($(BIN)/python benchmarks/gpu_check.py --wheel-specs)
	@du -sh $(GPU_WHEELS) && ls $(GPU_WHEELS)

gpu-check:
	@$(PYTHON) benchmarks/gpu_check.py --preflight
	@if [ -d $(GPU_WHEELS) ] && [ "$$(ls $(GPU_WHEELS))" != "$$(cat $(GPU_SITE)/.wheels 2>/dev/null)" ]; then \
	  $(PYTHON) -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade --target $(GPU_SITE) $(GPU_WHEELS)/*.whl \
	  && ls $(GPU_WHEELS) > $(GPU_SITE)/.wheels; fi
	PYTHONPATH=$(CURDIR)/$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache data/sample-crawl data/reverse-task
