# The two commands of the README. Each installs what it needs first.
PY ?= python3
DEMO_DIR ?= egt-demo-model
DEMO_ADS ?= "Lightweight trail running shoes with a grippy sole, now 20% off." \
            "Organic grain-free dog food delivered to your door every month."

.PHONY: setup demo test

setup:
	PYTHON=$(PY) bash scripts/setup.sh

# Main job: compress the embedded default (adaptive INT4 at 4.25 bits/weight) and answer targeting queries with it.
demo: setup
	$(PY) -m egt.cli compress default --bits 4 --budget 4.25 --out $(DEMO_DIR)
	$(PY) -m egt.cli info $(DEMO_DIR)
	$(PY) -m egt.cli target $(DEMO_DIR) $(DEMO_ADS) -k 5

# The test suite (CUDA tests skip without a GPU).
test: setup
	$(PY) -m pytest -q
