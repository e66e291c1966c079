# attestd — see README.md. Everything a target needs is installed by the
# project itself under .tools/ (git-ignored), keyed by version.
SHELL := /bin/bash
export GOTOOLCHAIN := local

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS     := -s -w -X github.com/attestd/attestd/cmd/attestd/app.version=$(VERSION) -X github.com/attestd/attestd/cmd/attestd/app.commit=$(COMMIT)
TOOLS       := $(CURDIR)/.tools
STATICCHECK := $(TOOLS)/staticcheck@v0.8.2/staticcheck
IMAGE       ?=
# Unit packages also run under the race detector; e2e drives real processes.
RACE_PKGS   := ./store/... ./attest/... ./configs/... ./cmd/...

.PHONY: all build test unit e2e bench bench-analysis bench-intake bench-vuln bench-e2e chaos lint demo stack tools image clean

all: build

## build: static, stripped, -trimpath binary in bin/attestd
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/attestd ./cmd/attestd

## test: vet + gofmt check, every test (unit, race, e2e against the real stack)
test: tools
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@echo "== go vet"; $(GO) vet ./...
	@echo "== go test (race)"; $(GO) test -race -count=1 $(RACE_PKGS)
	@echo "== go test (all, incl. e2e)"; $(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v /test/chaos)
	@echo "== chaos campaign, short (make chaos: the full one)"; $(GO) test -count=1 -timeout 20m ./test/chaos

unit:
	$(GO) test -race $(RACE_PKGS)

e2e: tools
	$(GO) test -count=1 -v -timeout 30m ./test/...

## bench: hot-path benchmarks, summarised with benchstat
BENCHSTAT := $(TOOLS)/benchstat/benchstat
bench: $(BENCHSTAT)
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./store/... | tee bin/bench.txt
	$(BENCHSTAT) bin/bench.txt

## bench-analysis: attestd's analysis vs the stock syft CLI (wall, peak RSS), incl. a ≥ 1 GiB image
bench-analysis:
	$(GO) run ./test/cmd/benchanalysis -runs 3 -big

## bench-intake: durable webhook intake of the real daemon (1- and 10-event POSTs, open- and closed-loop loads from a separate process) beside the no-storage ceiling, with the durable/ceiling ratios of throughput and p99
bench-intake:
	$(GO) run ./test/cmd/benchintake -runs 3

## bench-e2e: the stock CLI pipeline (syft, cosign attest ×3, cosign sign, crane copy ×2, cosign verify) vs attestd push → verified prod tag, per image and for a fleet on a shared base (attestd 200 images, each CLI fleet 12: its rate does not depend on N), with the floor, attestd's stage times and registry requests per image; also written to bin/bench-e2e.txt
bench-e2e:
	$(GO) run ./test/cmd/benche2e -runs 3 -fleet 200 -cli-fleet 12

## chaos: the reliability campaign against the real stack — 200 images, 50 kill -9s, faults and outages of the registry, Fulcio, the TSA, Rekor and the OIDC token, a full data disk (tmpfs: run as root), hostile images — then the invariant table (also bin/chaos.txt); exit 1 if one breaks. The short version runs in make test.
chaos: tools
	$(GO) run ./test/cmd/chaos

## bench-vuln: attestd's vulnerability DB build and scan vs the stock grype CLI (wall, peak RSS)
bench-vuln:
	$(GO) run ./test/cmd/benchvuln -runs 5

$(BENCHSTAT):
	GOBIN=$(dir $@) GOFLAGS=-mod=mod $(GO) install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

## lint: gofmt, go vet, staticcheck
lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	GOBIN=$(dir $@) GOFLAGS=-mod=mod $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

## tools: install the pinned stack tools (cosign, crane, fulcio, TSA, rekor-tiles, syft, grype) and the Debian packages docker-registry and chromium
tools:
	$(GO) run ./test/cmd/stack -install

## demo: the main job on embedded defaults, against the real local stack
demo: tools
	$(GO) run ./test/cmd/demo

## stack: start the local stack and keep it running (Ctrl-C stops it)
stack: tools
	$(GO) run ./test/cmd/stack

## image: build attestd's image without Docker; IMAGE=host/repo:tag pushes it, else an OCI layout in bin/image
image:
ifeq ($(IMAGE),)
	rm -rf bin/image && $(GO) run ./test/cmd/mkimage -version $(VERSION) -oci-layout bin/image
else
	$(GO) run ./test/cmd/mkimage -version $(VERSION) -push $(IMAGE)
endif

clean:
	rm -rf bin .demo
