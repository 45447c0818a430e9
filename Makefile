# tvd: Trusted Virtual Domains. `make help` lists the targets.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
# The module builds on its own: a go.work in a parent directory must not pull it into a workspace.
export GOWORK := off
GO ?= go
TAGS ?= tpmsimulator
BIN := bin/tvd
FUZZTIME ?= 3s
STATICCHECK_VERSION ?= v0.8.2

.PHONY: help deps build test demo bench lint fuzz generate refvalues clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## install the Debian packages the tests and the demo need (idempotent)
	@scripts/deps.sh

build: ## build bin/tvd (static, without cgo: the EE supervisor then drops capabilities on every thread)
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/tvd

test: deps build ## vet, run every test (as root the namespace, nftables, TPM and EE tests run too), then fuzz briefly
	$(GO) vet -tags $(TAGS) ./...
	$(GO) test -tags $(TAGS) -count=1 -timeout 25m ./...
	scripts/fuzz.sh $(FUZZTIME)

demo: deps build ## the main job: the paper's case study 1 as a lab (nodes with swtpm, controller, agents), then torn down
	@scripts/demo.sh

bench: deps build ## the Go benchmarks and a short fleet run, each figure with its ratio to a baseline from the same run
	scripts/bench.sh

lint: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: the files above need formatting"; exit 1; }
	$(GO) vet -tags $(TAGS) ./...
	@command -v staticcheck >/dev/null || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	staticcheck -tags $(TAGS) ./...

fuzz: ## run every fuzz target for FUZZTIME (default 5s) each
	scripts/fuzz.sh $(FUZZTIME)

generate: ## regenerate the protobuf/connect code under api/ (installs buf and the plugins)
	scripts/generate.sh

refvalues: build ## re-measure the examples' reference values from Debian's busybox-static, and update goldens
	@old=$$(grep -m1 -oE '[0-9a-f]{64}' examples/outsourcing/reference-values.yaml); \
	  new=$$(sha256sum /bin/busybox | cut -c1-64); \
	  if [ "$$old" = "$$new" ]; then echo "refvalues: up to date ($$new)"; exit 0; fi; \
	  echo "refvalues: $$old -> $$new"; \
	  sed -i "s/$$old/$$new/g" examples/*/reference-values.yaml && \
	  $(GO) test ./policy -run 'Golden|Malformed' -update

clean: ## remove build output
	rm -rf bin
