#!/usr/bin/env bash
# fuzz.sh runs every Fuzz target in the module for a short time each
# (default 5s; pass a duration as the first argument). New crashers are
# written under the package's testdata/fuzz and fail the run. New
# interesting inputs are not minimized (FUZZMINIMIZE, default 1x): a
# minimization still running when the time is up fails a short run with
# "context deadline exceeded"; crashers are kept as found. That error
# with no failing input written (the engine's deadline, not a finding) is
# reported but does not fail the run.
set -euo pipefail
fuzztime=${1:-5s}
tags=${TAGS:-tpmsimulator}
minimize=${FUZZMINIMIZE:-1x}
status=0
while IFS= read -r file; do
	dir=$(dirname "$file")
	for name in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$file" | awk '{print $2}'); do
		echo "fuzz: $dir $name ($fuzztime)"
		if ! go test -tags "$tags" -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "./$dir" >/tmp/tvd-fuzz.log 2>&1; then
			if grep -q 'context deadline exceeded' /tmp/tvd-fuzz.log && ! grep -q 'Failing input written' /tmp/tvd-fuzz.log; then
				# The fuzzer's own deadline hit a worker mid-run: no input
				# failed, nothing was found. Not a finding; say so.
				echo "fuzz: $dir $name: the fuzzer stopped at its deadline with no failing input (go's 'context deadline exceeded'); not a finding"
				continue
			fi
			cat /tmp/tvd-fuzz.log
			status=1
		fi
	done
done < <(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | sort)
exit $status
