# One venv for everything; `make test` and `make demo` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser test test-fast demo demo-model bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: `torch==2.13.0` resolves to the local CPU wheel on our machines.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m pip install -q --no-deps lpips==0.1.4
	touch $(STAMP)

# Debian's Chromium and its driver for the live page's browser tests (tests/test_serve_browser.py),
# installed when missing and running as root; otherwise (or offline) those tests skip and say how.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium and chromium-driver (apt-get) for the browser tests"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
				>/dev/null || echo "could not install chromium: the browser tests will skip"; \
		fi; \
	fi

test: setup browser
	$(PY) -m pytest -q

# Local work: everything but the tests marked slow (training runs, several processes, full-size
# models, real full disks); CI runs `make test`, all of them.
test-fast: setup browser
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/bilayer demo

# The recipe of the shipped demo model (docs/demo_model.md): synthetic clips of registry photos
# -> preprocessing -> both training stages -> demo model, motion track and held-out evaluation.
# About 5 h on 2 CPU cores, almost all of it training; clip making, preprocessing and training resume.
BILAYER := $(VENV)/bin/bilayer
DEMO_JOINT := joint_updater=true base.iterations=1000 updater.iterations=0 loss.warp=0 optim.lr=1e-4 checkpoint_every=200
demo-model: setup
	$(PY) scripts/make_demo_data.py --out demo/videos --clips-per-photo 6 --seconds 4 --size 256
	$(BILAYER) preprocess demo/videos/train --out demo/data_train
	$(BILAYER) preprocess demo/videos/heldout --out demo/data_heldout
	$(BILAYER) train --config configs/demo.yaml --data demo/data_train --out runs/demo \
		$(if $(wildcard runs/demo/checkpoints/last.pt),--resume)
	# Fine-tuning with G_upd's steps inside the base stage (joint_updater, docs/demo_model.md).
	$(BILAYER) train --config configs/demo.yaml --data demo/data_train --out runs/demo_joint \
		$(if $(wildcard runs/demo_joint/checkpoints/last.pt),--resume,--weights runs/demo/checkpoints/final.pt) \
		$(DEMO_JOINT)
	$(PY) scripts/ship_demo_model.py runs/demo_joint/checkpoints/final.pt bilayer/assets/demo.pt
	$(BILAYER) track demo/videos/driving/biden_drive.mp4 --out bilayer/assets/demo_track.npy
	$(BILAYER) evaluate --data demo/data_heldout --split all --clips-per-identity 6 \
		--json demo/eval_heldout.json --grid demo/eval_heldout.png

bench: setup
	mkdir -p runs/bench
	$(VENV)/bin/bilayer bench macs
	$(PY) benchmarks/runtime.py --json runs/bench/runtime.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
