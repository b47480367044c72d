# handover: brokerd (a durable STOMP broker with master/slave locking) and the
# handover failover sidecar. `make run` starts a local cluster; `make test`
# runs every test.

GO       ?= go
BIN      := bin
PKGS     := ./...
# Each fuzz target's budget is a count of executions, a few seconds' worth
# on a 2-core machine: a duration (-fuzztime 5s) trips a race in Go 1.26's
# fuzzing coordinator at the deadline (golang/go#75804, fixed in Go 1.27),
# which fails the run with "context deadline exceeded" though nothing was
# found. FUZZTIME (say FUZZTIME=1m) sets one budget for every target.
fuzzbudget = $(or $(FUZZTIME),$(1))

.PHONY: all build test test-short fuzz bench bench-backlog lint run clean deps chaos

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

# The full suite: lint, the race-enabled tests (real brokerd processes and a
# short chaos schedule among them), and a few seconds of each fuzz target.
test: lint
	$(GO) test -race -timeout 20m $(PKGS)
	# The proxy's goroutine data path, which Linux otherwise uses only
	# for clients the event loops hand off, runs the whole suite too.
	HANDOVER_PROXY_GOROUTINES=1 $(GO) test -race -timeout 5m ./proxy/
	$(MAKE) fuzz

test-short:
	$(GO) test -short $(PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime $(call fuzzbudget,30000x) ./frame/
	$(GO) test -run '^$$' -fuzz '^FuzzPeekPlain$$' -fuzztime $(call fuzzbudget,100000x) ./frame/
	$(GO) test -run '^$$' -fuzz '^FuzzReplay$$' -fuzztime $(call fuzzbudget,2000x) ./brokerd/journal/
	$(GO) test -run '^$$' -fuzz '^FuzzStampPlain$$' -fuzztime $(call fuzzbudget,25000x) ./stompproxy/
	$(GO) test -run '^$$' -fuzz '^FuzzParseUsers$$' -fuzztime $(call fuzzbudget,20000x) ./brokerd/auth/
	$(GO) test -run '^$$' -fuzz '^FuzzMatch$$' -fuzztime $(call fuzzbudget,50000x) ./brokerd/auth/
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(call fuzzbudget,20000x) ./health/watch/
	$(GO) test -run '^$$' -fuzz '^FuzzParseStored$$' -fuzztime $(call fuzzbudget,20000x) ./brokerd/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# The long chaos schedule (e2e/), without -race so the timing figures are
# realistic: CHAOS_KILLS faults, drawn from CHAOS_FAULTS (default every
# broker fault) by CHAOS_SEED (printed; set it to replay a run);
# CHAOS_PACE, CHAOS_FREEZE, CHAOS_BROKERS and E2E_LOGDIR (keep the logs)
# are documented on TestChaosLong.
CHAOS_KILLS ?= 100

CHAOS_STOMP_KILLS ?= 100

chaos:
	CHAOS_KILLS=$(CHAOS_KILLS) $(GO) test -count=1 -run '^TestChaosLong$$' -v -timeout 60m ./e2e/
	CHAOS_STOMP_KILLS=$(CHAOS_STOMP_KILLS) $(GO) test -count=1 -run '^TestStompSessionLong$$' -v -timeout 60m ./e2e/

# The backlog benchmarks (takeover, RSS and drain with a deep backlog,
# beside ActiveMQ when Debian's activemq is installed) take minutes per
# case, so they run with no test timeout; BACKLOG_SIZES picks the sizes.
BACKLOG_SIZES ?= 100000,1000000

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s -timeout 0 ./bench/ ./brokerd/journal/
	$(MAKE) bench-backlog

bench-backlog:
	BACKLOG_SIZES=$(BACKLOG_SIZES) $(GO) test -run '^$$' -bench 'TakeoverBacklog' -benchtime 1x -timeout 0 ./bench/

run: build
	./scripts/run-cluster.sh

clean:
	rm -rf $(BIN) run
