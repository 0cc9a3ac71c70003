#!/usr/bin/env bash
# The one command that runs every berth test: installs the Debian 12
# dependencies, starts a Docker engine for the compose tests, builds with
# warnings as errors, and runs ctest (unit, integration, compose).
#   tests/run.sh                 everything
#   BERTH_SKIP_COMPOSE=1 tests/run.sh   no Docker: unit and integration only
#   BERTH_SANITIZE=1 tests/run.sh       the same under ASan+UBSan (build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh

build=build
cmake_args=(-DBERTH_WERROR=ON)
if [ "${BERTH_SANITIZE:-0}" = 1 ]; then
  build=build-asan
  cmake_args+=(-DBERTH_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
fi

ctest_args=(--output-on-failure)
if [ "${BERTH_SKIP_COMPOSE:-0}" = 1 ]; then
  ctest_args+=(-LE compose)
else
  deploy/docker-up.sh
fi

cmake -S . -B "$build" "${cmake_args[@]}"
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" "${ctest_args[@]}"
