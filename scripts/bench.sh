#!/usr/bin/env bash
# make bench: the Go benchmarks with their baseline ratios, then a short
# fleet run against an in-process controller, each figure with its ratio.
#
# Knobs (environment): BENCHTIME (go test -benchtime, default 200ms),
# BENCH_PKGS (default ./...), FLEET_AGENTS (2000), FLEET_INTERVAL (10s),
# FLEET_DURATION (30s), FLEET_PROFILE (a file for the controller's CPU
# profile; empty: none). Set FLEET_AGENTS=0 to skip the fleet run.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCHTIME=${BENCHTIME:-200ms}
BENCH_PKGS=${BENCH_PKGS:-./...}
FLEET_AGENTS=${FLEET_AGENTS:-2000}
FLEET_INTERVAL=${FLEET_INTERVAL:-10s}
FLEET_DURATION=${FLEET_DURATION:-30s}
FLEET_PROFILE=${FLEET_PROFILE:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tvd-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "== machine"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr); $(go version | cut -d' ' -f3)"
if [ -r /proc/pressure/cpu ]; then
	echo "CPU pressure (other load on this machine): $(head -1 /proc/pressure/cpu)"
fi

echo
echo "== go test -bench (benchtime $BENCHTIME, tags tpmsimulator)"
status=0
go test -run '^$' -bench . -benchtime "$BENCHTIME" -tags tpmsimulator $BENCH_PKGS >"$tmp/bench.txt" 2>&1 || status=$?
# One row per benchmark: its package, ns/op and every ratio metric
# (units named x-vs-BASELINE) it reports.
awk '
	/^pkg: / { pkg = $2; sub(/^github.com\/tvd-dev\/tvd\/?/, "", pkg); if (pkg == "") pkg = "tvd" }
	/^Benchmark/ && / ns\/op/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		nsop = ""; ratios = ""
		for (i = 3; i < NF; i++) {
			if ($(i+1) == "ns/op") nsop = $i
			if ($(i+1) ~ /^x-(vs|of)-/) ratios = ratios sprintf("%s %s  ", $i, $(i+1))
		}
		rows[++n] = sprintf("%-16s %-48s %14s  %s", pkg, name, nsop, (ratios == "" ? "(no baseline ratio)" : ratios))
	}
	/^(FAIL|---)/ || /build failed|cannot find|undefined:/ { bad[++m] = $0 }
	END {
		printf "%-16s %-48s %14s  %s\n", "package", "benchmark", "ns/op", "ratio vs baseline (same run)"
		for (i = 1; i <= n; i++) print rows[i]
		if (m > 0) { print ""; print "not measured (failures):"; for (i = 1; i <= m && i <= 20; i++) print "  " bad[i] }
	}
' "$tmp/bench.txt"
if [ "$status" -ne 0 ]; then
	echo "(go test exited $status; the full output was:)"
	grep -E '^(FAIL|ok|---|#)' "$tmp/bench.txt" | head -40 || true
fi

if [ "$FLEET_AGENTS" = "0" ]; then
	exit "$status"
fi
echo
echo "== tvd bench fleet --local --agents $FLEET_AGENTS --interval $FLEET_INTERVAL --duration $FLEET_DURATION"
go build -o "$tmp/tvd" ./cmd/tvd
if ! "$tmp/tvd" bench fleet --help >/dev/null 2>&1; then
	echo "tvd has no 'bench fleet' command (cli.NewBenchCmd is not registered in cmd/tvd)" >&2
	exit 1
fi
args=(bench fleet --local --agents "$FLEET_AGENTS" --interval "$FLEET_INTERVAL" --duration "$FLEET_DURATION")
if [ -n "$FLEET_PROFILE" ]; then
	args+=(--cpuprofile "$FLEET_PROFILE")
fi
# Progress goes to stderr once every few seconds; the table to stdout.
fstatus=0
"$tmp/tvd" "${args[@]}" 2> >(awk 'NR % 5 == 1' >&2) || fstatus=$?
if [ -n "$FLEET_PROFILE" ]; then
	echo
	echo "== controller CPU profile (go tool pprof -tagfocus side=controller -top)"
	go tool pprof -tagfocus side=controller -top -nodecount 25 "$tmp/tvd" "$FLEET_PROFILE" 2>/dev/null | sed -n '1,35p'
fi
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$fstatus"
