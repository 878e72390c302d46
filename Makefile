# Thin wrappers over the `alexnet` binary. `make help` lists them.
#
# Without SRC, `make preprocess` generates the embedded sample dataset under data/ and uses it.

PIPELINE ?= sample
SAMPLE   ?= data/sample
# 120 training images per class: enough for the demo network to learn visibly in minutes.
SAMPLE_ARGS ?= --train-per-class 120 --val-per-class 20
SRC      ?=
OUT      ?= data/shards-$(PIPELINE)
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
# Training: DATA defaults to the preprocessed sample data; CUDA=1 builds and trains on the GPU.
DATA     ?=
RUN      ?= runs/$(PIPELINE)
EPOCHS   ?=
CUDA     ?=
RESUME   ?=
CHECKPOINT ?=
# make demo: a short run of its own, so that `make train` keeps the full recipe.
DEMO_RUN ?= runs/demo
DEMO_EPOCHS ?= 14
# VERIFY=1: preprocess also re-reads every stored record against its checksum.
VERIFY   ?=

CARGO ?= cargo
BIN   := target/release/alexnet
# NCCL=1: CUDA with NCCL, for data-parallel training on several GPUs (needs libnccl.so).
FEATURES := $(if $(NCCL),--features nccl,$(if $(CUDA),--features cuda,))
PIPELINE_FILE := pipelines/$(PIPELINE).toml
INPUT := $(if $(SRC),$(SRC),$(SAMPLE))

.PHONY: help tools build demo sample preprocess export contact-sheet train evaluate test bench bench-pillow bench-photos bench-imagenet bench-loader clean-data fmt

help:
	@echo "make demo                 the whole chain on sample data: preprocess, a short CPU training, evaluate"
	@echo "make preprocess [PIPELINE=alexnet] [SRC=/path/to/imagenet] [OUT=dir] [JOBS=n] [VERIFY=1]"
	@echo "make export [OUT=dir]     write stored val images as PNG into OUT/export"
	@echo "make contact-sheet        PNG grid of augmented training samples, OUT/contact-sheet.png"
	@echo "make train [PIPELINE=alexnet] [DATA=shards] [RUN=runs/name] [EPOCHS=n] [CUDA=1|NCCL=1] [RESUME=1]"
	@echo "make evaluate [PIPELINE=..] [DATA=..] [RUN=..] [CHECKPOINT=file] [CUDA=1]"
	@echo "make test                 the whole test suite (CPU only)"
	@echo "make bench                criterion benchmarks + preprocessing vs Pillow (generated, real and ImageNet-like photos)"

# libjpeg-turbo is built from source into the binary: that needs cmake, nasm and a C compiler,
# which the script installs where they are missing (or names the command that would).
tools:
	@bash scripts/build-deps.sh

build: tools
	$(CARGO) build --release --locked $(FEATURES)

$(BIN): build

# The sample dataset is generated once; delete data/ to regenerate it.
$(SAMPLE)/LOC_synset_mapping.txt: | build
	$(BIN) sample --out $(SAMPLE) $(SAMPLE_ARGS)

sample: $(SAMPLE)/LOC_synset_mapping.txt

preprocess: build $(if $(SRC),,sample)
	$(BIN) preprocess --input $(INPUT) --output $(OUT) --pipeline $(PIPELINE_FILE) --jobs $(JOBS) $(if $(VERIFY),--verify)

export: build
	$(BIN) export --data $(OUT) --split val --out $(OUT)/export

# The whole product on the sample data in about two minutes on 2 cores: preprocess, a short CPU
# training run that learns visibly, and the paper's evaluation. Run again, it resumes the same
# run (one stopped before its first checkpoint starts over).
demo: preprocess
	$(BIN) export --data $(OUT) --split val --out $(OUT)/export --limit 16
	$(BIN) contact-sheet --data $(OUT) --pipeline $(PIPELINE_FILE) --out $(OUT)/contact-sheet.png
	@if ls $(DEMO_RUN)/checkpoints/*.safetensors >/dev/null 2>&1; then resume=--resume; \
	else resume=; fi; \
	echo "$(BIN) train --data $(OUT) --run $(DEMO_RUN) --pipeline $(PIPELINE_FILE) --device cpu --epochs $(DEMO_EPOCHS) $$resume"; \
	$(BIN) train --data $(OUT) --run $(DEMO_RUN) --pipeline $(PIPELINE_FILE) --device cpu --epochs $(DEMO_EPOCHS) $$resume
	$(BIN) evaluate --data $(OUT) --run $(DEMO_RUN) --device cpu
	@echo
	@echo "Where to look:"
	@printf '  %-38s %s\n' \
		$(OUT)/contact-sheet.png "training crops as the network sees them" \
		"$(OUT)/export/val/*.png" "validation images as stored" \
		$(DEMO_RUN)/eval/loss.png "training and validation loss (also error.png, learning_rate.png)" \
		$(DEMO_RUN)/eval/per_class.png "accuracy per class" \
		$(DEMO_RUN)/eval/report.json "the table above: top-1/top-5 error, centre crop and 10 crops"
	@echo "Next: make train (the full $(PIPELINE) recipe), make evaluate; on ImageNet see README.md."

# Without DATA: the sample data, generated and preprocessed first (a no-op when up to date).
train: build $(if $(DATA),,preprocess)
	$(BIN) train --data $(if $(DATA),$(DATA),$(OUT)) --run $(RUN) --pipeline $(PIPELINE_FILE) \
		--device $(if $(CUDA),cuda,cpu) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(RESUME),--resume)

# Top-1/top-5 error (centre and 10 crops) of RUN's latest checkpoint, report and plots in RUN/eval.
evaluate: build
	$(BIN) evaluate --data $(if $(DATA),$(DATA),$(OUT)) --run $(RUN) --pipeline $(PIPELINE_FILE) \
		--device $(if $(CUDA),cuda,cpu) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

test: tools
	$(CARGO) test --locked

bench: build
	$(CARGO) bench --locked
	$(MAKE) bench-pillow
	$(MAKE) bench-photos
	$(MAKE) bench-imagenet
	$(MAKE) bench-loader

# The training loader alone against the bare copy loop, on the 256×256 shards bench-pillow made.
bench-loader: build
	$(BIN) bench-loader --data bench-data/out-sample --output u8 --baseline
	$(BIN) bench-loader --data bench-data/out-sample --output f32 --baseline

contact-sheet: build
	$(BIN) contact-sheet --data $(OUT) --pipeline $(PIPELINE_FILE) --out $(OUT)/contact-sheet.png

# Preprocessing throughput against a Pillow pipeline with torchvision's semantics.
bench-pillow: build
	python3 -m pip install --quiet --disable-pip-version-check 'Pillow>=10'
	python3 benches/preprocess_vs_pillow.py

# Real photographs (Debian's wallpaper packages, fetched here, plus Pillow re-encodings) against
# the Pillow pipeline: speed, CPU time, memory, a profile and parity.
bench-photos: build
	python3 -m pip install --quiet --disable-pip-version-check 'Pillow>=10'
	python3 benches/real_photos.py

# A corpus composed like ImageNet (mostly ~500×375 baseline JPEGs), made from those photographs,
# against the Pillow pipeline, and the time the 1.28M training images would take on 16 and 64 cores.
bench-imagenet: build
	python3 -m pip install --quiet --disable-pip-version-check 'Pillow>=10'
	python3 benches/imagenet_like.py

clean-data:
	rm -rf data

fmt:
	$(CARGO) fmt
