#!/usr/bin/env bash
# Lists the tests that skipped during `make test` (one line per test and reason, from the
# file DULI_SKIP_LOG named), so a green run also says what did not run. Tests skip only
# for what no setup installs: the shared data folder beside the checkout (../shared or
# DULI_SHARED_DIR: reference model outputs, the sample set in every transfer syntax),
# root, or golden files of another CPU.
set -euo pipefail
log="${1:?usage: skip-summary.sh SKIP_LOG}"
if [ ! -s "$log" ]; then
    echo "== make test: no test skipped"
    exit 0
fi
n=$(sort -u "$log" | wc -l)
echo "== make test: $n skip(s); these tests passed without checking what they need:"
sort -u "$log" | sed 's/^/   /'
if grep -q "shared" "$log"; then
    echo "   (the shared data folder is not part of the repository: see README, "Two commands")"
fi
