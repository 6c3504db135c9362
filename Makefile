# vcl: the two commands of the README, and the steps they are made of.
#   make demo   set-up, build, then the main job on the in-silico brain
#   make test   set-up, then fmt + clippy + every test of the workspace
SHELL := /bin/bash
ROOT := $(shell pwd)
# The build needs the venv's torch (libtorch for tch); see scripts/env.sh.
export VIRTUAL_ENV := $(ROOT)/.venv
export PATH := $(ROOT)/.venv/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
unexport LIBTORCH

DEMO_DATA ?= data/demo
DEMO_SEED ?= 0
VCL := target/release/vcl

.PHONY: setup photos browser tools deploy-tools image build demo test fmt clippy fuzz

setup:
	@scripts/setup.sh

# The wide photo set (40 photos, .cache/photos-wide) for `vcl synth --photos`.
photos:
	@scripts/setup_photos.sh

browser:
	@scripts/setup_browser.sh

tools:
	@scripts/setup_tools.sh

deploy-tools:
	@scripts/setup_deploy.sh

# vcl-serve's image with podman (VARIANT=cpu|gpu): scripts/image.sh.
VARIANT ?= cpu
image: build deploy-tools
	scripts/image.sh $(VARIANT)

build: setup
	cargo build --release --workspace --bins

DEMO_RUN ?= runs/demo
DEMO_SIZE ?= 128

# The paper's method on one early ROI: contrastive fine-tuning, then the same encoder
# fit on the tuned backbone, compared with the untuned one. DEMO_REGRESSION=1 also runs
# the regression baseline (75 epochs: about as long again).
DEMO_ROI ?= V1v+V1d
DEMO_FIT_ROIS ?= V1v,V1d
DEMO_REGRESSION ?= 0

demo: build
	$(VCL) synth --preset demo --out $(DEMO_DATA) --seed $(DEMO_SEED)
	$(VCL) inspect $(DEMO_DATA)
	$(VCL) fit --data $(DEMO_DATA) --subjects 1 --hemispheres lh,rh --backbone mobilenet_v2 \
	  --input-size $(DEMO_SIZE) --method untuned --out $(DEMO_RUN)/untuned --evaluate
	rm -rf $(DEMO_RUN)/cl
	$(VCL) finetune --data $(DEMO_DATA) --subjects 1 --hemisphere lh --roi $(DEMO_ROI) --method cl --micro-batch 64 \
	  --input-size $(DEMO_SIZE) --out $(DEMO_RUN)/cl
	$(VCL) fit --data $(DEMO_DATA) --subjects 1 --hemispheres lh --rois $(DEMO_FIT_ROIS) \
	  --input-size $(DEMO_SIZE) --weights $(DEMO_RUN)/cl/backbone.safetensors --method cl \
	  --out $(DEMO_RUN)/cl-fit --evaluate
	if [ "$(DEMO_REGRESSION)" = 1 ]; then \
	  rm -rf $(DEMO_RUN)/regression && \
	  $(VCL) finetune --data $(DEMO_DATA) --subjects 1 --hemisphere lh --roi $(DEMO_ROI) \
	    --method regression --micro-batch 64 --input-size $(DEMO_SIZE) --out $(DEMO_RUN)/regression && \
	  $(VCL) fit --data $(DEMO_DATA) --subjects 1 --hemispheres lh --rois $(DEMO_FIT_ROIS) \
	    --input-size $(DEMO_SIZE) --weights $(DEMO_RUN)/regression/backbone.safetensors \
	    --method regression --out $(DEMO_RUN)/regression-fit --evaluate && \
	  $(VCL) compare $(DEMO_RUN)/untuned $(DEMO_RUN)/regression-fit $(DEMO_RUN)/cl-fit --out $(DEMO_RUN)/compare; \
	else \
	  $(VCL) compare $(DEMO_RUN)/untuned $(DEMO_RUN)/cl-fit --out $(DEMO_RUN)/compare; \
	fi
	# What the tuned network learned: saliency, MI bound (beside that of heads trained
	# on the frozen untuned backbone), probe, landscape.
	$(VCL) lateralization --run $(DEMO_RUN)/untuned --rois V1v,V1d,V3v,V3d --out $(DEMO_RUN)/lateralization
	$(VCL) lateralization --run $(DEMO_RUN)/cl-fit --out $(DEMO_RUN)/lateralization-cl
	rm -rf $(DEMO_RUN)/cl-frozen
	$(VCL) finetune --data $(DEMO_DATA) --subjects 1 --hemisphere lh --roi $(DEMO_ROI) --method cl --micro-batch 64 \
	  --input-size $(DEMO_SIZE) --freeze features,classifier --out $(DEMO_RUN)/cl-frozen
	$(VCL) mi --run $(DEMO_RUN)/cl --run $(DEMO_RUN)/cl-frozen --out $(DEMO_RUN)/mi
	TUNED="--run $(DEMO_RUN)/cl $$([ -f $(DEMO_RUN)/regression/backbone.safetensors ] && echo --run $(DEMO_RUN)/regression)"; \
	  $(VCL) probe $$TUNED --out $(DEMO_RUN)/probe && $(VCL) landscape $$TUNED --out $(DEMO_RUN)/landscape
	rm -rf exports/subj01-lh-untuned-mobilenet_v2 exports/subj01-rh-untuned-mobilenet_v2 \
	  exports/subj01-lh-V1v-cl-mobilenet_v2 exports/subj01-lh-V1d-cl-mobilenet_v2
	$(VCL) export --run $(DEMO_RUN)/untuned --run $(DEMO_RUN)/cl-fit --out exports
	scripts/demo_serve.sh exports subj01-lh-untuned-mobilenet_v2
	$(VCL) report $(DEMO_RUN)

fmt:
	cargo fmt --all --check
	cargo fmt --manifest-path fuzz/Cargo.toml --check

clippy: setup
	cargo clippy --workspace --all-targets -- -D warnings

# Bounded fuzzing of the server's decoders (FUZZ_SECONDS each of 5 targets).
FUZZ_SECONDS ?= 20
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

test: setup photos browser tools deploy-tools fmt clippy
	cargo build --workspace --bins
	cargo test --workspace
	$(MAKE) --no-print-directory fuzz
