# DisCEdge - the two commands of the README, and the rest.
#   make demo    set-up, build, run the 9-turn scenario on a fresh node
#   make test    set-up, build, the whole suite; then again under ASan+UBSan;
#                then the libFuzzer harnesses, 20 s each (tests/fuzz)
#   make bench   the edge-testbed evaluation (bench/run; writes bench/out/, bench/figures/)
JOBS ?= 2

.PHONY: all setup build build-asan build-fuzz demo test test-plain test-asan test-fuzz bench clean

all: build

setup:
	scripts/setup.sh

build: setup
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j$(JOBS)

build-asan: setup
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDC_SANITIZE=ON >/dev/null
	cmake --build build-asan -j$(JOBS)

build-fuzz: setup
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDC_FUZZ=ON >/dev/null
	cmake --build build-fuzz -j$(JOBS)

demo: build
	scripts/demo.sh

# sysinfo first: llama.cpp's numerics differ between CPU variants, so the
# output names the one this run used.
test-plain: build
	build/discedge sysinfo
	ctest --test-dir build --output-on-failure

test-asan: build-asan
	ctest --test-dir build-asan --output-on-failure

test-fuzz: build-fuzz
	ctest --test-dir build-fuzz --output-on-failure

test: test-plain test-asan test-fuzz

bench: build
	bench/run

clean:
	rm -rf build build-asan build-fuzz
