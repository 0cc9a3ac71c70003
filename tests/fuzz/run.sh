#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan) in build-fuzz/ and runs
# each for a fixed time from its seed corpus in tests/fuzz/corpus/<target>/.
# Fails on any crash, leak, timeout or out-of-memory; the failing input is
# left in build-fuzz/artifacts/<target>/.
#   tests/fuzz/run.sh          20 s per target (CI)
#   tests/fuzz/run.sh 600      the long run: 10 min per target
#   tests/fuzz/run.sh 60 fuzz_frame fuzz_hb_msg   only these targets
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_frame fuzz_hb_msg fuzz_config fuzz_session fuzz_pick_query
  fuzz_journal_record fuzz_feed_msg)
build=${BERTH_FUZZ_BUILD:-build-fuzz}
cc=${BERTH_FUZZ_CC:-clang-14}

command -v "$cc" >/dev/null || {
  echo "fuzz: $cc not found (deploy/install-deps.sh installs clang-14 and libclang-rt-14-dev)" >&2
  exit 1
}

cmake -S . -B "$build" -DCMAKE_C_COMPILER="$cc" -DBERTH_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target "${targets[@]}" -j"$(nproc)"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=()
for t in "${targets[@]}"; do
  seeds=tests/fuzz/corpus/$t
  work=$build/corpus/$t        # what the run discovers; the committed seeds stay as they are
  artifacts=$build/artifacts/$t/
  mkdir -p "$work" "$artifacts"
  echo "=== $t: ${seconds}s"
  start=$(date +%s)
  # -timeout: one input running 5 s is a hang; -rss_limit_mb: and a memory blow-up a failure.
  if "$build/tests/fuzz/$t" "$work" "$seeds" -max_total_time="$seconds" -timeout=5 \
      -rss_limit_mb=2048 -malloc_limit_mb=1024 -artifact_prefix="$artifacts" \
      -print_final_stats=1 >"$build/$t.log" 2>&1; then
    echo "=== $t: ok in $(( $(date +%s) - start ))s ($(grep -E '^stat::number_of_executed_units' "$build/$t.log" | awk '{print $2}') runs)"
  else
    echo "=== $t: FAILED (log $build/$t.log, inputs in $artifacts)"
    grep -E 'ERROR|SUMMARY|Test unit written|deadly signal|timeout' "$build/$t.log" | head -20 || true
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets clean for ${seconds}s each"
