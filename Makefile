# keel: a thin front for CMake. The two newcomer commands are `make run` and
# `make test`; both set up what they need first.
#
#   make setup     install Debian packages and npm-provided parts (idempotent)
#   make build     debug build (ASan + UBSan, warnings are errors) in build/debug
#   make release   optimized build in build/release
#   make test      setup + build + every test through CTest
#   make run       setup + release build + keeld on .run/ with the example packages
#                  (KEEL_PORT=N for another port than 8480; .run/env for other shells)
#   make fuzz      run the libFuzzer targets (FUZZ_SECONDS each, default 60)
#   make bench     benchmarks (bench/run.sh), results on stdout
#   make install   install the release build (PREFIX, DESTDIR)

PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 60

.PHONY: all setup build release test run fuzz bench install clean format

all: build

setup:
	@scripts/setup.sh

build: setup
	@cmake -S . -B build/debug -DCMAKE_BUILD_TYPE=Debug -DKEEL_WERROR=ON >/dev/null
	@cmake --build build/debug -j $(JOBS) -- --no-print-directory

release: setup
	@cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF \
		-DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@cmake --build build/release -j $(JOBS) -- --no-print-directory

test: build
	@cd build/debug && ctest --output-on-failure -j $(JOBS)

run: release
	@scripts/run-example.sh

fuzz: setup
	@scripts/fuzz.sh $(FUZZ_SECONDS)

bench: release
	@bench/run.sh

install: release
	@DESTDIR=$(DESTDIR) cmake --install build/release

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build
