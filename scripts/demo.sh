#!/usr/bin/env bash
# demo.sh is `make demo`: the paper's case study 1, from policy to packets.
# It checks the policy, then runs `tvd lab demo`: the lab comes up (one
# network namespace, swtpm and agent per node, EEs as containers, the
# controller beside them), real packets are checked against Table 3, the
# compliance report is printed, an intruder runs an unlisted program in a
# red client EE, the detection and reactions are shown with their latency,
# the packets are checked again, and the lab is taken down.
set -euo pipefail
cd "$(dirname "$0")/.."
tvd=bin/tvd
ex=examples/outsourcing
step() { printf '\n== %s\n' "$*"; }

step "tvd policy lint $ex"
$tvd policy lint $ex
step "tvd policy test $ex   (the paper's Table 3, cell by cell)"
$tvd policy test $ex
step "tvd policy query $ex --from yellow/management-console --to red/client-os -o json"
$tvd policy query $ex --from yellow/management-console --to red/client-os -o json

if [ "$(id -u)" != 0 ]; then
	echo
	echo "demo: the lab needs root (network namespaces, swtpm, containers); run 'sudo make demo' for the rest"
	exit 0
fi
lab=${TVD_LAB_DIR:-/var/lib/tvd-lab}
$tvd lab down --dir "$lab" >/dev/null 2>&1 || true
$tvd lab demo $ex --dir "$lab"
