#!/usr/bin/env bash
# The one command that runs every berth test. On a Debian 12 machine it:
#   1. installs the packages it needs (deploy/install-deps.sh),
#   2. starts a Docker engine for the compose tests (deploy/docker-up.sh),
#   3. builds with warnings as errors and runs ctest: unit, integration,
#      browser and compose tests (build/),
#   4. builds again under ASan+UBSan and runs the unit and integration
#      tests there (build-asan/),
#   5. builds the Release type users build (-O3 warnings as errors) and
#      runs the unit tests there (build-release/),
#   6. runs every libFuzzer target for 20 s (tests/fuzz/run.sh, build-fuzz/).
# Switches for local use:
#   BERTH_SKIP_COMPOSE=1   no Docker: leave the compose tests out
#   BERTH_QUICK=1          steps 1-3 only
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh

ctest_args=(--output-on-failure)
if [ "${BERTH_SKIP_COMPOSE:-0}" = 1 ]; then
  ctest_args+=(-LE compose)
else
  deploy/docker-up.sh
fi

step() { printf '\n==== %s\n' "$*"; }

step "build and test (build/)"
cmake -S . -B build -DBERTH_WERROR=ON
cmake --build build -j"$(nproc)"
ctest --test-dir build "${ctest_args[@]}"

[ "${BERTH_QUICK:-0}" = 1 ] && exit 0

step "unit and integration tests under ASan+UBSan (build-asan/)"
cmake -S . -B build-asan -DBERTH_WERROR=ON -DBERTH_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
cmake --build build-asan -j"$(nproc)"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
  ctest --test-dir build-asan --output-on-failure -L 'unit|integration'

step "Release build and unit tests (build-release/)"
cmake -S . -B build-release -DBERTH_WERROR=ON -DCMAKE_BUILD_TYPE=Release
cmake --build build-release -j"$(nproc)"
ctest --test-dir build-release --output-on-failure -L unit

step "fuzzing, 20 s per target (build-fuzz/)"
tests/fuzz/run.sh 20
