# diffkit: `make sample` and `make test` install everything they need into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.diffkit-installed

.PHONY: install sample test bench lint readme-table clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet diffusers==0.42.1
	$(BIN)/python -m pip install --quiet --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP)

install: $(STAMP)

sample: $(STAMP)
	$(BIN)/diffkit sample --sde vp --solver ode

# one torch thread: the suite's tensors are tiny, and two threads on two shared cores thrash
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest bench/ --benchmark-only

readme-table: $(STAMP)
	$(BIN)/diffkit list sampler --markdown > .samplers.md
	$(BIN)/python -c "import pathlib, re; p = pathlib.Path('README.md'); t = pathlib.Path('.samplers.md').read_text().strip(); \
	b, e = '<!-- samplers:begin -->', '<!-- samplers:end -->'; \
	p.write_text(re.sub(re.escape(b) + '.*?' + re.escape(e), lambda m: b + chr(10) + t + chr(10) + e, p.read_text(), flags=re.S))"
	rm -f .samplers.md

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache samples.npz samples.png
