#!/usr/bin/env bash
# demo.sh is `make demo`: the paper's case study 1, from policy to a running
# deployment. It checks and explains the policy, brings the lab up (one
# network namespace, swtpm and agent per node, the controller beside them),
# shows the members the controller admitted on TPM evidence, the compliance
# report and the audit log, and takes everything down again.
set -euo pipefail
cd "$(dirname "$0")/.."
tvd=bin/tvd
ex=examples/outsourcing
lab=${TVD_LAB_DIR:-/var/lib/tvd-lab}
step() { printf '\n== %s\n' "$*"; }

step "tvd policy lint $ex"
$tvd policy lint $ex
step "tvd policy test $ex   (the paper's Table 3, cell by cell)"
$tvd policy test $ex
step "tvd policy query $ex --from yellow/management-console --to red/client-os -o json"
$tvd policy query $ex --from yellow/management-console --to red/client-os -o json

if [ "$(id -u)" != 0 ]; then
	echo
	echo "demo: the lab needs root (network namespaces, swtpm); run 'sudo make demo' for the rest"
	exit 0
fi
$tvd lab down --dir "$lab" >/dev/null 2>&1 || true
trap '$tvd lab down --dir "$lab" >/dev/null 2>&1 || true' EXIT
step "tvd lab up $ex"
$tvd lab up $ex --dir "$lab"
export TVD_CREDS=$lab/controller/admin
step "tvd lab status"
$tvd lab status --dir "$lab"
step "tvd lab check   (real packets between every pair of EEs, against Table 3)"
for i in 1 2 3 4 5; do $tvd lab check --dir "$lab" >/tmp/tvd-lab-check.txt 2>&1 && break; sleep 2; done
cat /tmp/tvd-lab-check.txt
step "tvd nodes"
$tvd nodes
step "tvd members"
$tvd members
step "tvd report red"
$tvd report red || true
step "tvd audit tail"
$tvd audit tail --limit 15
step "tvd lab down"
$tvd lab down --dir "$lab"
trap - EXIT
