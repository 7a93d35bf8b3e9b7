# Two entry points: `make demo` (the main job) and `make test`. Both create .venv and install
# the project from its own files; nothing needs to be installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean arm64-emu chromium espeak-ng zoo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,dms,qnn,ray,qat]"
	touch $(STAMP)

install: $(STAMP)

# The DMS fleet: real MediaPipe models (from the mediapipe wheel on PyPI), converted to ONNX,
# calibrated and evaluated on real face images, FP32 vs INT8 measured side by side.
demo: $(STAMP)
	$(BIN)/python -m edgequant.dms.build --out .cache/dms
	-$(BIN)/edgequant devices setup arm64-emu
	$(BIN)/edgequant fleet examples/dms/fleet.yaml -o reports/demo
	$(BIN)/python -m edgequant.dms.frame_pipeline --fleet-dir reports/demo --runs 50

# The model zoo (benchmarks/zoo): real public models from PyPI wheels, built offline into
# .cache/zoo, run through `edgequant fleet` (run, or tune where the defaults miss the budget),
# then ORT's default flows beside each answer -> benchmarks/results/ZOO.md and zoo.json (per ISA).
# Needs espeak-ng (Debian) for the speech models: installed here when missing. PYTHONPATH=src
# runs this checkout's code even where .venv is shared with another checkout.
zoo: $(STAMP) espeak-ng
	PYTHONPATH=src:. $(BIN)/python -m benchmarks.zoo.build --out .cache/zoo
	mkdir -p reports && cat /proc/loadavg > reports/zoo.loadavg
	PYTHONPATH=src:. $(BIN)/edgequant fleet benchmarks/zoo/fleet.yaml -o reports/zoo
	cat /proc/loadavg >> reports/zoo.loadavg
	PYTHONPATH=src:. $(BIN)/python -m benchmarks.zoo.report --fleet-dir reports/zoo --loadavg reports/zoo.loadavg

# The arm64-emu device's Debian arm64 root (qemu-user; needs root): built once, kept in
# ~/.cache/edgequant/arm64-emu. Where it cannot be built, its tests say why and are skipped.
arm64-emu: $(STAMP)
	$(BIN)/edgequant devices setup arm64-emu

# Debian's chromium renders report.html in the browser tests (no browser download from elsewhere).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser tests will be skipped"

# Debian's espeak-ng speaks the zoo's speech inputs offline (VAD, keyword spotting).
espeak-ng:
	@command -v espeak-ng >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) \
		|| echo "espeak-ng could not be installed: the zoo's speech models will be skipped"

test: $(STAMP) chromium espeak-ng
	$(BIN)/python -m edgequant.dms.build --out .cache/dms
	-$(BIN)/edgequant devices setup arm64-emu
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .cache reports
