# handover: brokerd (a durable STOMP broker with master/slave locking) and the
# handover failover sidecar. `make run` starts a local cluster; `make test`
# runs every test.

GO       ?= go
BIN      := bin
PKGS     := ./...
FUZZTIME ?= 5s

.PHONY: all build test test-short fuzz bench lint run clean deps

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The full suite: lint, the race-enabled tests (real brokerd processes and a
# short chaos schedule among them), and a few seconds of each fuzz target.
test: lint
	$(GO) test -race -timeout 20m $(PKGS)
	$(MAKE) fuzz

test-short:
	$(GO) test -short $(PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime $(FUZZTIME) ./frame/
	$(GO) test -run '^$$' -fuzz '^FuzzReplay$$' -fuzztime $(FUZZTIME) ./brokerd/journal/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./bench/ ./brokerd/journal/

run: build
	./scripts/run-cluster.sh

clean:
	rm -rf $(BIN) run
