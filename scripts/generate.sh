#!/usr/bin/env bash
# Regenerates the Go code of tvd's API (api/gen/...) from api/proto with buf,
# installing the pinned code generators with `go install` if they are
# missing or at another version.
#
#   scripts/generate.sh          regenerate api/gen (commit the result)
#   scripts/generate.sh --check  lint, and fail if api/gen is not up to date
#
# Tools go to $TVD_TOOLS_BIN (default: $(go env GOPATH)/bin).
set -euo pipefail

BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12        # = google.golang.org/protobuf in go.mod
PROTOC_GEN_CONNECT_GO_VERSION=v1.21.1 # = connectrpc.com/connect in go.mod

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${TVD_TOOLS_BIN:-$(go env GOPATH)/bin}
mkdir -p "$bin"
export PATH="$bin:$PATH"

# install NAME PACKAGE VERSION: go install PACKAGE@VERSION into $bin unless
# $bin/NAME --version already reports VERSION (with or without the "v").
install() {
	local name=$1 pkg=$2 version=$3 have=""
	if [[ -x "$bin/$name" ]]; then
		have=$("$bin/$name" --version 2>&1 | head -n1 || true)
	fi
	if [[ "$have" == *"${version#v}" ]]; then
		return
	fi
	echo "generate: installing $pkg@$version" >&2
	GOBIN="$bin" go install "$pkg@$version"
}

install buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install protoc-gen-connect-go connectrpc.com/connect/cmd/protoc-gen-connect-go "$PROTOC_GEN_CONNECT_GO_VERSION"

cd "$root/api"
buf lint
buf format --diff --exit-code

case "${1:-}" in
--check)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	buf generate --template buf.gen.yaml --output "$tmp"
	if ! diff -r -x doc.go "$tmp/gen" gen; then
		echo "generate: api/gen is stale; run scripts/generate.sh and commit" >&2
		exit 1
	fi
	echo "generate: api/gen is up to date"
	;;
"")
	# Remove only generated files: the hand-written doc.go files stay.
	find gen -name '*.pb.go' -delete -o -name '*.connect.go' -delete
	buf generate --template buf.gen.yaml
	echo "generate: regenerated api/gen"
	;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac
