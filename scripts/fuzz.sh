#!/usr/bin/env bash
# Bounded fuzzing run for CI and for developers: `make fuzz` (FUZZ_SECONDS=60 by default).
#
# Installs what is missing (a nightly toolchain, cargo-fuzz), builds every target of the fuzz
# crate (fuzz/) once, then runs each for FUZZ_SECONDS over a copy of its committed seed corpus
# (fuzz/corpus/<target>/ is read-only here: new inputs go to a temporary directory, so CI never
# grows the repository). Prints one summary line per target and fails if any target found a crash,
# a panic, a timeout, or an allocation over the limits; the reproducer is kept in
# fuzz/artifacts/<target>/ (reproduce: fuzz/target/<triple>/release/<target> <file>).
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    space-separated subset of the targets (default: all)
#   FUZZ_SANITIZER  none (default) or address; see "Build" below
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
ALL_TARGETS="wal_frames wire config log_segment"
FUZZ_TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
TARGET_DIR=$ROOT/fuzz/target

# Largest input per target: a WAL or a log segment of a few dozen small pages; one framed message;
# one configuration.
max_len() {
    case "$1" in
        wal_frames | log_segment) echo 65536 ;;
        wire) echo 16384 ;;
        config) echo 4096 ;;
        *) echo "unknown fuzz target '$1' (targets: $ALL_TARGETS)" >&2; return 1 ;;
    esac
}

# ---- Install what is missing ------------------------------------------------------------------
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# ---- Build --------------------------------------------------------------------------------------
# One build of all targets: release, with debug assertions and overflow checks (an overflow that
# release code would silently wrap is a finding). No sanitizer by default: the code under test is
# safe Rust, so AddressSanitizer finds little more, yet it makes the build and every run slower;
# large allocations are caught without it (fuzz/src/lib.rs bounds every allocation, and
# -rss_limit_mb bounds the total). FUZZ_SANITIZER=address builds with it when unsafe code is
# involved.
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
start=$(date +%s)
(cd fuzz && cargo +nightly fuzz build -O --debug-assertions --sanitizer "$FUZZ_SANITIZER" \
    --target-dir "$TARGET_DIR")
echo "fuzz: built all targets in $(($(date +%s) - start)) s (sanitizer: $FUZZ_SANITIZER)"
BIN=$TARGET_DIR/$triple/release
if [ "$FUZZ_SANITIZER" = address ]; then
    export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0
fi

# ---- Run ----------------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
logs=$TARGET_DIR/fuzz-logs
mkdir -p "$logs"
failed=()
summary=()
for t in $FUZZ_TARGETS; do
    len=$(max_len "$t")
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    seeds=$(find "fuzz/corpus/$t" -type f | wc -l)
    log=$logs/$t.log
    echo "fuzz: $t for ${FUZZ_SECONDS}s ($seeds seeds, max_len $len)"
    rc=0
    "$BIN/$t" "$work/$t" "fuzz/corpus/$t" \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=256 \
        -max_len="$len" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p' <<<"$status")
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        result="FAILED (exit $rc${artifact:+, reproducer $artifact}; log $log)"
        failed+=("$t")
        echo "---- last lines of $log ----"
        tail -n 40 "$log"
        echo "----"
    fi
    summary+=("$(printf '%-12s %12s execs (%s/s), %s: %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-no coverage line}" "$result")")
done

echo "fuzz summary (${FUZZ_SECONDS}s per target):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
