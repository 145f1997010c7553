PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo up test bench clean

$(BIN)/clarion: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(BIN)/clarion

demo: install
	$(BIN)/clarion db upgrade
	$(BIN)/clarion demo

up: install
	$(BIN)/clarion up

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/broadcast.py

clean:
	rm -rf var
