# shardfill — run `make` for the list of targets.
GO      ?= go
BIN     ?= bin/shardfill
SIZE    ?= small
VARIANTS ?=
PKGS    := ./...

.DEFAULT_GOAL := help

.PHONY: help build test demo bench lint clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/shardfill
	$(GO) build -o $(BIN) ./cmd/shardfill

test: ## run every test against a throwaway PostgreSQL (or TEST_DATABASE_URL)
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 45m $(PKGS)

demo: build ## backfill a synthetic history on a throwaway PostgreSQL, with live progress
	$(BIN) demo

bench: build ## benchmarks: Go benchmarks and the bench/ report (SIZE=small|medium|large|xlarge, VARIANTS=tuned,defaults,shuffled)
	$(GO) test -run '^$$' -bench . -benchmem ./shard/ ./engine/
	$(GO) run ./bench -size $(SIZE) -bin $(BIN) $(if $(VARIANTS),-variants $(VARIANTS) -modes limit,shardfill -concurrency 2)

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l .)" || (gofmt -l .; echo "gofmt: the files above need formatting"; exit 1)
	$(GO) vet $(PKGS)

clean: ## remove build output
	rm -rf bin
