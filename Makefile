# The two commands of the README. Both install what is missing first (tools/install_deps.sh).
PYTHON ?= python3

.PHONY: install demo test

install:
	PYTHON=$(PYTHON) bash tools/install_deps.sh

demo: install
	$(PYTHON) tools/demo.py --out-dir outputs/demo --seed 0

test: install
	$(PYTHON) -m pytest
