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

.PHONY: setup build demo test fmt clippy

setup:
	@scripts/setup.sh

build: setup
	cargo build --release --workspace --bins

DEMO_RUN ?= runs/demo
DEMO_SIZE ?= 128

demo: build
	$(VCL) synth --preset demo --out $(DEMO_DATA) --seed $(DEMO_SEED)
	$(VCL) inspect $(DEMO_DATA)
	$(VCL) fit --data $(DEMO_DATA) --subjects 1 --hemispheres lh,rh --backbone mobilenet_v2 \
	  --input-size $(DEMO_SIZE) --method untuned --out $(DEMO_RUN)/untuned --evaluate
	$(VCL) export --run $(DEMO_RUN)/untuned --out exports

fmt:
	cargo fmt --all --check

clippy: setup
	cargo clippy --workspace --all-targets -- -D warnings

test: setup fmt clippy
	cargo test --workspace
