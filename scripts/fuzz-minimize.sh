#!/usr/bin/env bash
# Reduces what the fuzzers grew (fuzz/grown/<target>/) together with the seeds
# (fuzz/corpus/<target>/) and the committed reduced corpus (fuzz/minimized/<target>/) to the
# smallest set of inputs libFuzzer finds that keeps all of their coverage
# (-set_cover_merge=1), and puts it in fuzz/minimized/<target>/, which is committed and
# replayed by the ordinary test suite (daemon/tests/fuzz_corpus.rs). Prints files and bytes
# per target before and after.
#
#   scripts/fuzz-minimize.sh [TARGET...]      (make fuzz-minimize)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo/fuzz"
# shellcheck source=scripts/fuzz-setup.sh
source "$repo/scripts/fuzz-setup.sh"
count() { find "$@" -type f 2>/dev/null | wc -l; }
printf '%-16s %10s %10s %12s\n' target inputs kept bytes
for t in "${targets[@]}"; do
    mkdir -p "grown/$t" "corpus/$t" "minimized/$t" logs
    out="$(mktemp -d "minimized/.$t.XXXXXX")"
    inputs=$(count "grown/$t" "corpus/$t" "minimized/$t")
    cargo +nightly fuzz run "${flags[@]}" "$t" "$out" "minimized/$t" "grown/$t" "corpus/$t" -- \
        -set_cover_merge=1 -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
        >"logs/$t.minimize.log" 2>&1
    rm -rf "minimized/$t"
    mv "$out" "minimized/$t"
    chmod 755 "minimized/$t"
    printf '%-16s %10s %10s %12s\n' "$t" "$inputs" "$(count "minimized/$t")" \
        "$(find "minimized/$t" -type f -exec cat {} + | wc -c)"
done
