# xlkv: the two commands of the README, and a few more. CMake does the building; this file only strings steps together.
#   make run    set-up, build, and generate text with the default model
#   make test   set-up, build (release, and ASan+UBSan), all tests
SHARED_DATA ?= $(abspath ../shared/data)
DEFAULT_MODEL ?= models/xlkv-gutenberg-cla2
JOBS ?= $(shell nproc)
PROMPT ?= It was a dark and stormy night

MAKEFLAGS += --no-print-directory
# Build logs go to build*/build.log; they are shown only when the build fails.
.PHONY: setup build build-asan run test test-cuda bench bench-gpu fuzz clean

setup:
	@bash scripts/setup-deps.sh

build: setup
	@echo "build: configuring and building build/ (log: build/build.log)"
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build -j $(JOBS) >build/build.log 2>&1 || (tail -40 build/build.log; exit 1)

build-asan: setup
	@echo "build: configuring and building build-asan/ with ASan + UBSan (log: build-asan/build.log)"
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DXLKV_SANITIZE=ON -DXLKV_NATIVE=OFF >/dev/null
	@cmake --build build-asan -j $(JOBS) >build-asan/build.log 2>&1 || (tail -40 build-asan/build.log; exit 1)

run: build
	@if [ -e "$(DEFAULT_MODEL)" ]; then \
	  printf '%s' "$(PROMPT)"; ./build/xlkv generate -m "$(DEFAULT_MODEL)" -p "$(PROMPT)" -n 256 --temp 0.8 -s 42; \
	else \
	  echo "make run: the default model $(DEFAULT_MODEL) is absent."; \
	  echo "The project ships models/xlkv-gutenberg-standard and models/xlkv-gutenberg-cla2;"; \
	  echo "set DEFAULT_MODEL=/path/to/model (a Hugging Face directory or a llama2.c .bin)."; \
	  exit 1; \
	fi

test: build build-asan
	@cd build && XLKV_SHARED_DATA=$(SHARED_DATA) ctest --output-on-failure -j $(JOBS) -LE cuda
	@cd build-asan && XLKV_SHARED_DATA=$(SHARED_DATA) ctest --output-on-failure -j $(JOBS) -LE cuda

# CUDA tests: need a GPU (the GPU machine); CI never runs them.
test-cuda: build
	@cd build && XLKV_SHARED_DATA=$(SHARED_DATA) ctest --output-on-failure -L cuda

bench: build
	@./build/bench_cpu --shared-data $(SHARED_DATA) --out bench/results/cpu.jsonl

# GPU benchmark (the GPU machine; ~7.5 minutes, scheduled by --deadline-s): decode, prefill, throughput protocol.
# BENCH_GPU_ARGS=--quick for a smoke run (about a minute). Without a GPU it says so and exits 0.
bench-gpu: build
	@./build/bench_gpu --out bench/results/gpu.jsonl $(BENCH_GPU_ARGS)

fuzz:
	@bash scripts/fuzz.sh

clean:
	rm -rf build build-asan
