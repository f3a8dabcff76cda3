PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := data/demo
DEMO_BENCHMARKS = --dataset holidays ukbench copydays roxford5k --holidays-path $(DEMO)/bench/holidays \
	--holidays-rotations $(DEMO)/bench/holidays/rotations.txt --ukbench-path $(DEMO)/bench/ukbench \
	--copydays-path $(DEMO)/bench/copydays --distractors-path $(DEMO)/bench/copydays \
	--distractors-list $(DEMO)/bench/copydays/distractors.txt --num-distractors 40 \
	--roxford5k-path $(DEMO)/bench/revisitop/roxford5k

.PHONY: venv demo test test-quick lint gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: venv
	rm -rf $(DEMO)
	$(BIN)/python tools/synthetic_data.py imagefolder --output $(DEMO)/imagenet
	$(BIN)/torchrun --standalone --nproc_per_node=2 train.py --data-path $(DEMO)/imagenet --output-dir $(DEMO)/train \
		--device cpu --model resnet18 -b 32 -j 1 --epochs 10 --lr 0.04 --lr-scheduler cosineannealinglr \
		--lr-warmup-epochs 1 --lr-warmup-decay 0.1 --train-crop-size 64 --val-resize-size 73 --val-crop-size 64 \
		--print-freq 100
	$(BIN)/python finetune_p.py --data-path $(DEMO)/imagenet --checkpoint $(DEMO)/train/checkpoint.pth \
		--output-dir $(DEMO)/finetune_p --device cpu --input-size 96 -j 1 --print-freq 25
	$(BIN)/python tools/synthetic_data.py imagefolder --output $(DEMO)/whiten_images --num-classes 72 --train-per-class 10 \
		--val-per-class 1 --image-size 80x60 --seed 1
	$(BIN)/python whiten.py --checkpoint $(DEMO)/finetune_p/finetune_p.pth --whiten-path $(DEMO)/whiten_images \
		--output-dir $(DEMO)/whiten --device cpu -j 1
	$(BIN)/python train.py --test-only --resume $(DEMO)/whiten/whitened.pth --model resnet18 \
		--data-path $(DEMO)/imagenet --device cpu -j 1 --val-resize-size 73 --val-crop-size 64
	$(BIN)/python tools/synthetic_data.py all --output $(DEMO)/bench
	$(BIN)/python evaluate.py --checkpoint $(DEMO)/train/checkpoint.pth --device cpu -j 1 --input-size 96 \
		$(DEMO_BENCHMARKS) --output-dir $(DEMO)/evaluate
	$(BIN)/python evaluate.py --checkpoint $(DEMO)/whiten/whitened.pth --device cpu -j 1 --input-size 96 \
		$(DEMO_BENCHMARKS) --output-dir $(DEMO)/evaluate_final
	$(BIN)/python tools/compare_metrics.py $(DEMO)/evaluate/metrics.json $(DEMO)/evaluate_final/metrics.json
	$(BIN)/python tools/synthetic_data.py duplicates --output $(DEMO)/duplicates
	$(BIN)/python extract.py --checkpoint $(DEMO)/whiten/whitened.pth --images $(DEMO)/duplicates/images \
		--output-dir $(DEMO)/duplicates/descriptors --device cpu -j 1 --shard-size 50
	$(BIN)/python search.py --dedup --database $(DEMO)/duplicates/descriptors -k 5 \
		--known-duplicates $(DEMO)/duplicates/duplicates.csv --precision-target 0.9 --keep largest \
		--output-dir $(DEMO)/duplicates/search

test: venv
	$(BIN)/python -m pytest

test-quick: venv
	$(BIN)/python -m pytest --quick

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

gpu-check: venv
	$(BIN)/python -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) data
