#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo fuzz + libFuzzer on the nightly toolchain) for
# FUZZ_SECONDS each, then prints one row per target: executions, executions per second,
# coverage (libFuzzer's edge counter) and crashes. Runs start from the committed seeds in
# fuzz/corpus/<target>/ and the committed reduced corpus in fuzz/minimized/<target>/, and
# keep the coverage-increasing inputs they find in fuzz/grown/<target>/ (not committed:
# later runs start from them too; scripts/fuzz-minimize.sh reduces them into
# fuzz/minimized/); a crash, hang or
# out-of-memory input is copied to fuzz/regressions/<target>/, where the ordinary test
# suite (daemon/tests/fuzz_corpus.rs) replays it on every run, once fixed, for good.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (make fuzz FUZZ_SECONDS=600)
#
# FUZZ_RUNS=N also stops each target after N executions, whichever comes first:
# FUZZ_RUNS=10000000 FUZZ_SECONDS=3600 runs each to 10 million executions or one CPU-hour.
#
# Results are appended to fuzz/runs.tsv (date, target, seconds, executions, exec/s,
# coverage, features, crashes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo/fuzz"
seconds="${1:-${FUZZ_SECONDS:-60}}"
shift || true
# shellcheck source=scripts/fuzz-setup.sh
source "$repo/scripts/fuzz-setup.sh"
mkdir -p logs
printf '%-16s %12s %10s %8s %8s %8s\n' target executions exec/s cov ft crashes
status=0
for t in "${targets[@]}"; do
    mkdir -p "grown/$t" "corpus/$t" "minimized/$t" "regressions/$t" "artifacts/$t"
    log="logs/$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    set +e
    cargo +nightly fuzz run "${flags[@]}" "$t" "grown/$t" "corpus/$t" "minimized/$t" -- \
        -max_total_time="$seconds" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    set -e
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [ "$crashes" -gt 0 ]; then
        cp -n artifacts/"$t"/* "regressions/$t/"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf '%-16s %12s %10s %8s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" "${execs:-}" \
        "${rate:-}" "${cov:-}" "${ft:-}" "$crashes" >>runs.tsv
done
[ "$status" -eq 0 ] || echo "crashes were found: see fuzz/regressions/ and fuzz/logs/" >&2
exit "$status"
