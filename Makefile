# Two commands do all the set-up on a fresh machine:
#   make demo   runs the main job on this machine (no cluster needed)
#   make test   installs what the tests need (venv, Slurm, munge, MariaDB) and runs them all
# Both are idempotent and quick when already done.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Reinstall only when the dependency list or the pins change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: demo test venv slurm-install slurm-up slurm-down clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: venv
	$(BIN)/aistack run recipes/examples/smoke.yaml --on local

slurm-install:
	@bash slurm/install.sh

test: venv slurm-install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

slurm-up: slurm-install
	bash slurm/up.sh

slurm-down:
	bash slurm/down.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
