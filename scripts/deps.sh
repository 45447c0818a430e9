#!/usr/bin/env bash
# deps.sh installs what `make test` and `make demo` need on a fresh Debian
# machine, and nothing when it is all there. It is idempotent.
set -euo pipefail

# Debian packages: swtpm (a real TPM 2.0 per lab node), busybox-static (the
# EE base image), iproute2 (network namespaces), nftables (inspecting the
# flow table by hand), tcpdump (underlay captures), gcc and libssl-dev (cgo
# for the in-process TPM simulator), etcd-server (the store's etcd backend
# is tested against a real etcd), chromium (the dashboard is tested in a
# real headless browser), util-linux (nsenter, unshare).
pkgs=(swtpm swtpm-tools busybox-static iproute2 nftables tcpdump gcc libc6-dev libssl-dev etcd-server chromium util-linux)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing Debian packages: ${missing[*]}" >&2
	echo "deps: install them with: sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# etcd-server enables a system etcd on 127.0.0.1:2379; the tests start their
# own on random ports and need none.
if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null; then
	systemctl disable --now etcd >/dev/null 2>&1 || true
fi
echo "deps: done"
