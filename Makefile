# Spillway's development commands. `make run` and `make test` are the two a
# new user needs; the rest are for working on Spillway.

GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 5s
# Packages of every module in go.work (./... does not cross modules).
PACKAGES := ./pkg/... ./proto/... ./services/ingest/... ./tools/...

# Fuzz targets, as package:Target; `make test` runs each for FUZZTIME.
FUZZ_TARGETS := \
	./services/ingest/internal/httpapi:FuzzParseNDJSON \
	./services/ingest/internal/httpapi:FuzzParseV2 \
	./services/ingest/internal/httpapi:FuzzDecodeV3 \
	./services/ingest/internal/httpapi:FuzzParseMeta \
	./pkg/config:FuzzParse

.PHONY: all build run test unit fuzz lint clean

all: build

## build: the service binaries and development programs, into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/spillway-ingest ./services/ingest
	$(GO) build -trimpath -o $(BIN)/devkafka ./tools/devkafka
	$(GO) build -trimpath -o $(BIN)/devrun ./tools/devrun

## run: the services, with a development Kafka broker when no brokers are configured (CONFIG=file.yaml to use one)
run: build
	$(BIN)/devrun -bin $(BIN) $(if $(CONFIG),-config $(CONFIG))

## test: every test (unit, integration, end-to-end), then each fuzz target briefly
test: unit fuzz

unit: build
	E2E_BIN_DIR=$(BIN) $(GO) test -race -count=1 -timeout 15m work

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

## lint: go vet and staticcheck (pinned in tools/go.mod)
lint:
	$(GO) vet $(PACKAGES)
	$(GO) tool staticcheck $(PACKAGES)

clean:
	rm -rf $(BIN)
