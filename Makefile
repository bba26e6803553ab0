# Spillway's development commands. `make run` and `make test` are the two a
# new user needs; the rest are for working on Spillway.

SHELL    := /bin/bash
GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 5000x
TOOLS    := $(CURDIR)/.tools/bin
# Pinned in tools/protogen/go.mod, a module outside go.work.
TOOL_PKGS := github.com/bufbuild/buf/cmd/buf google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc github.com/fullstorydev/grpcurl/cmd/grpcurl
AMBASSADOR_PROTO := testdata/kafka-ambassador
PIXY_PROTO := testdata/kafka-pixy
# Jaeger v2 for development, built from its Go module (v1.76.0 is Jaeger
# v2.13.0) and cached outside the clone: the build takes about 7 minutes.
JAEGER_VERSION := v1.76.0
JAEGER_BIN := $(HOME)/.cache/spillway/jaeger-$(JAEGER_VERSION)/jaeger
# Packages of every module in go.work (./... does not cross modules).
# The suite's service logs and registered test secrets, scanned after it.
TEST_LOGS := $(CURDIR)/.test-logs
PACKAGES := ./pkg/... ./proto/... ./services/ingest/... ./services/forwarder/... ./services/resender/... ./tools/... ./deploy/...

# Fuzz targets, as package:Target; `make test` runs each for FUZZTIME.
FUZZ_TARGETS := \
	./services/ingest/internal/httpapi:FuzzParseNDJSON \
	./services/ingest/internal/httpapi:FuzzParseV2 \
	./services/ingest/internal/httpapi:FuzzDecodeV3 \
	./services/ingest/internal/httpapi:FuzzParseMeta \
	./services/ingest/internal/httpapi:FuzzValidJSON \
	./services/ingest/internal/httpapi:FuzzPixyRequest \
	./services/ingest/internal/grpcapi:FuzzCappedCodec \
	./services/ingest/internal/kafkaapi:FuzzParseRequest \
	./services/ingest/internal/kafkaapi:FuzzOversizedProduce \
	./pkg/config:FuzzParse \
	./services/ingest/internal/identity:FuzzParseUserAgent \
	./services/ingest/internal/identity:FuzzClientID \
	./services/ingest/internal/identity:FuzzAuthenticate \
	./services/ingest/internal/identity:FuzzBearerToken \
	./services/ingest/internal/policy:FuzzPolicy \
	./pkg/spill:FuzzDecode

.PHONY: all build run run-cluster test unit unit-packages fuzz lint clean tools proto proto-check jaeger jaeger-run images bench bench-quick

all: build

## build: the service binaries and development programs, into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/spillway-ingest ./services/ingest
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/spillway-forwarder ./services/forwarder
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/spillway-resender ./services/resender
	$(GO) build -trimpath -o $(BIN)/devkafka ./tools/devkafka
	$(GO) build -trimpath -o $(BIN)/devrun ./tools/devrun
	$(GO) build -trimpath -o $(BIN)/devnats ./tools/devnats
	$(GO) build -trimpath -o $(BIN)/loadgen ./tools/loadgen
	$(GO) build -trimpath -o $(BIN)/bench ./tools/bench

## run: the services, with a development Kafka broker when no brokers are configured (CONFIG=file.yaml to use one)
run: build
	$(BIN)/devrun -bin $(BIN) $(if $(CONFIG),-config $(CONFIG))

## run-cluster: two ingests on a three-node JetStream cluster (stores under data/cluster), the forwarder and resender, and the development broker unless brokers are configured
run-cluster: build
	$(BIN)/devrun -cluster -bin $(BIN) $(if $(CONFIG),-config $(CONFIG))

## test: every test (unit, integration, end-to-end), then each fuzz target briefly
test: proto-check build tools jaeger
	$(call beside_e2e,$(MAKE) --no-print-directory lint unit-packages fuzz)

# The logs of every service the tests start are copied to
# TEST_LOGS/services with the secrets the tests use; secretscan fails if
# any log, or go test's own output, holds one, and if no service log was
# captured (go test's output, outside that folder, does not count).
unit: build tools jaeger
	$(call beside_e2e,$(MAKE) --no-print-directory unit-packages)

# beside_e2e runs the commands $(1) with tools/e2e beside them, from the
# start, then prints tools/e2e's output and scans every log for secrets.
# tools/e2e's tests mostly wait on the binaries they run (a breaker, an
# election, a restart), so they take little of the cores the others use:
# make test runs lint, the other packages and the fuzz targets meanwhile.
# It runs without the race detector: the services it tests are the
# binaries of make build, not race-built, so -race would only watch the
# harness and the kfake brokers in the test process, and it made them the
# slowest part of every loaded test. The race detector runs on every
# other package, where the services' code runs in the test process.
E2E_PKG := github.com/spillway/spillway/tools/e2e
define beside_e2e
	rm -rf $(TEST_LOGS) && mkdir -p $(TEST_LOGS)/services
	export SPILLWAY_TEST_LOGS=$(TEST_LOGS)/services E2E_BIN_DIR=$(BIN) GRPCURL=$(TOOLS)/grpcurl JAEGER_BIN=$(JAEGER_BIN); \
	  $(GO) test -vet=off -count=1 -timeout 15m $(E2E_PKG) > $(TEST_LOGS)/e2e.log 2>&1 & e2e=$$!; \
	  $(1); rest=$$?; \
	  wait $$e2e; e2e=$$?; echo "--- tools/e2e"; cat $(TEST_LOGS)/e2e.log; [ $$rest -eq 0 ] && [ $$e2e -eq 0 ]
	$(GO) run ./tools/secretscan -also $(TEST_LOGS)/go-test.log -also $(TEST_LOGS)/e2e.log $(TEST_LOGS)/services
endef

# unit-packages: every package but tools/e2e, under the race detector
# (make unit and make test run it beside tools/e2e).
unit-packages:
	mkdir -p $(TEST_LOGS); set -o pipefail; $(GO) test -race -vet=off -count=1 -timeout 15m $$($(GO) list work | grep -vx '$(E2E_PKG)') 2>&1 \
	  | tee $(TEST_LOGS)/go-test.log

## tools: buf, protoc-gen-go, protoc-gen-go-grpc and grpcurl at their pinned versions, into .tools/bin
tools:
	@mkdir -p $(TOOLS)
	cd tools/protogen && GOWORK=off $(GO) build -o $(TOOLS)/ $(TOOL_PKGS)

## proto: lint the protos and regenerate the Go code (committed)
proto: tools
	cd proto && PATH=$(TOOLS):$$PATH buf lint && PATH=$(TOOLS):$$PATH buf generate
	cd tools/e2e && PATH=$(TOOLS):$$PATH buf generate $(AMBASSADOR_PROTO) --template $(AMBASSADOR_PROTO)/buf.gen.yaml
	cd tools/e2e && PATH=$(TOOLS):$$PATH buf generate $(PIXY_PROTO) --template $(PIXY_PROTO)/buf.gen.yaml

## proto-check: fail when the committed generated code differs from what the protos generate
proto-check: tools
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	(cd proto && PATH=$(TOOLS):$$PATH buf lint && PATH=$(TOOLS):$$PATH buf generate -o $$tmp/proto); \
	(cd tools/e2e && PATH=$(TOOLS):$$PATH buf generate $(AMBASSADOR_PROTO) --template $(AMBASSADOR_PROTO)/buf.gen.yaml -o $$tmp/e2e; \
	  PATH=$(TOOLS):$$PATH buf generate $(PIXY_PROTO) --template $(PIXY_PROTO)/buf.gen.yaml -o $$tmp/e2e); \
	diff -r $$tmp/proto/gen proto/gen && diff -r $$tmp/e2e/ambassadorpb tools/e2e/ambassadorpb \
	  && diff -r $$tmp/e2e/pixypb tools/e2e/pixypb \
	  || { echo "generated code is stale: run make proto and commit"; exit 1; }; \
	echo "generated code is up to date"

# Each package's fuzz test binary is built once (go test -c -fuzz
# instruments it) and run once per target, from the package's folder for
# its testdata, with a fuzz cache of its own: each run starts from the
# seeds and testdata, not from what runs before it found in GOCACHE.
fuzz:
	@set -e; dir=$$(mktemp -d); trap 'rm -rf $$dir' EXIT; \
	for pkg in $$(printf '%s\n' $(FUZZ_TARGETS) | sed 's/:.*//' | sort -u); do \
		$(GO) test -vet=off -c -fuzz=. -o $$dir/$$(basename $$pkg).test $$pkg; \
	done; \
	for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($(FUZZTIME))"; \
		(cd $$pkg && $$dir/$$(basename $$pkg).test -test.run='^$$' -test.fuzz="^$$name\$$" \
			-test.fuzztime=$(FUZZTIME) -test.fuzzcachedir=$$dir/cache/$$name); \
	done

## lint: gofmt, go vet and staticcheck (pinned in tools/go.mod)
lint:
	@unformatted=$$(git ls-files '*.go' | grep -v '\.pb\.go$$' | xargs gofmt -l); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet $(PACKAGES)
	$(GO) tool staticcheck $(PACKAGES)

## jaeger: build Jaeger v2 once into ~/.cache/spillway (go install is refused: its go.mod has replace directives)
jaeger: $(JAEGER_BIN)

$(JAEGER_BIN):
	@set -e; dir=$$(cd / && GOWORK=off GOFLAGS=-mod=mod $(GO) mod download -json github.com/jaegertracing/jaeger@$(JAEGER_VERSION) \
	  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; cp -r "$$dir"/. $$tmp; chmod -R u+w $$tmp; \
	echo "building Jaeger $(JAEGER_VERSION) into $(JAEGER_BIN) (about 7 minutes on 2 cores)"; \
	mkdir -p $(dir $(JAEGER_BIN)); cd $$tmp && GOWORK=off $(GO) build -o $(JAEGER_BIN).tmp ./cmd/jaeger && mv $(JAEGER_BIN).tmp $(JAEGER_BIN)

## jaeger-run: Jaeger on 127.0.0.1 (query API and UI placeholder :16686, OTLP :4317 and :4318); make run exports to it
jaeger-run: jaeger
	OTEL_TRACES_SAMPLER=always_off $(JAEGER_BIN) --config tools/jaeger/config.yaml

## bench: records/s, latency and CPU per record through each API against the limits on this machine, in one run (about 5 minutes; wrk for single-record HTTP when installed); the table goes into docs/benchmarks.md. ONLY=single,ambassador runs some groups (bin/bench -h lists them) and only prints their table
bench: build
	$(BIN)/bench -bin $(BIN) $(if $(ONLY),-only $(ONLY))

## bench-quick: each figure once, 2 s runs, printed and not written (ONLY=groups as for bench): to iterate on one figure
bench-quick: build
	$(BIN)/bench -bin $(BIN) -runs 1 -duration 2s -out '' $(if $(ONLY),-only $(ONLY))

## compose-secrets: the compose stack's NATS secrets (an nkey per service, a CA and certificate) into deploy/compose/secrets, which git ignores; keeps what exists
compose-secrets:
	cd tools && $(GO) run ./natssecrets -out $(CURDIR)/deploy/compose/secrets

## images: the container image with the three services (needs a Docker engine)
images:
	docker build --build-arg VERSION=$(VERSION) -t spillway:$(VERSION) -t spillway:dev .

clean:
	rm -rf $(BIN) $(TEST_LOGS)
