# erasure-worker. `make test` runs every test against a real PostgreSQL: TEST_DATABASE_URL,
# else a server on 127.0.0.1:5432, else a throwaway cluster from the installed binaries.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PG      := deploy/local/with-postgres

# deploy/ is a Go module of its own (its tests need Kubernetes' and kustomize's libraries; the
# service does not), so the targets below name both modules. GOWORK=off: a developer's go.work
# joining the two would select versions over both go.mod files, and the service must build and
# test with the versions its own go.mod names.
export GOWORK := off

.PHONY: build test vet fmt-check fuzz demo bench bench-ratelimit chaos clean image check-deploy screenshots

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# The race detector runs on everything but deploy/, whose single-threaded checks of YAML
# and JSON gain nothing from it and cost a minute of compiling Kubernetes' libraries.
test: fmt-check vet
	$(PG) $(GO) test -race -count=1 -timeout 8m ./...
	$(GO) -C deploy test -count=1 -timeout 5m ./...

vet:
	$(GO) vet ./...
	$(GO) -C deploy vet ./...
	$(GO) -C bench/riverpeer vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# The fault suite (cmd/erasure-worker/chaos_*_test.go, build tag chaos): kill -9, PostgreSQL
# restarts and freezes (SIGSTOP), Knot outages, 429s, 401s, hangs and garbage, bad input, SIGTERM drain; real
# processes against a real PostgreSQL and knotfake. About a minute and a half on two cores.
chaos:
	$(GO) vet -tags chaos ./cmd/erasure-worker
	$(PG) $(GO) test -tags chaos -run '^TestChaos' -count=1 -timeout 8m ./cmd/erasure-worker

# A short run of each fuzz target; the seed corpora under testdata/fuzz run in `make test`.
# FUZZTIME is a count of inputs (Nx) rather than a duration: with a duration, Go 1.26's fuzz
# coordinator can report its own deadline as a failure, `context deadline exceeded` with no
# failing input (go.dev/issue/75804, fixed in Go 1.27), as CI met on FuzzParseDeleteRequest.
FUZZTIME ?= 100000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzClassify$$' -fuzztime $(FUZZTIME) ./knotclient
	$(GO) test -run '^$$' -fuzz '^FuzzParseLine$$' -fuzztime $(FUZZTIME) ./connector
	$(GO) test -run '^$$' -fuzz '^FuzzParseSubmission$$' -fuzztime $(FUZZTIME) ./connector
	$(GO) test -run '^$$' -fuzz '^FuzzParseDeleteRequest$$' -fuzztime $(FUZZTIME) ./connector/ketch
	$(GO) test -run '^$$' -fuzz '^FuzzPendingPage$$' -fuzztime $(FUZZTIME) ./connector/transcend

# 3000 requests against a local fake Knot, and 300 through each door (the HTTP API, a fake Ketch,
# a fake Transcend, a fake Fides, a fake OneTrust) with every outcome reported back
# (deploy/local/demo). With DATABASE_URL set the demo
# uses that database as is (its rows, demo-<timestamp>-<i>, stay); else a throwaway cluster.
demo: build
	@if [ -n "$$DATABASE_URL" ]; then \
		deploy/local/demo; \
	else \
		env -u TEST_DATABASE_URL WITH_POSTGRES_THROWAWAY=1 $(PG) deploy/local/demo; \
	fi

# The shared rate limit with 1, 3 and 5 replicas: achieved rate and worst one-second window
# against RATE_LIMIT_RPS (figures, not a pass/fail test; about a minute).
bench-ratelimit:
	$(PG) $(GO) test -tags bench -run '^TestBenchRateLimit$$' -count=1 -v -timeout 10m ./cmd/erasure-worker

# The worker against its own limits (issue #6): pipeline throughput, database round trips per
# request, claim cost up to 10 million finished rows (about 2 GB of disk while it runs), pickup
# latency, memory, the rate at 200ms per call, the shared rate across replicas (7) and the fault
# figures moved out of the pass/fail suites (8: backoff spread, kill -9 takeover), then the peer
# (9, issue #13: the same job on River, bench/riverpeer, a module of its own that the test builds,
# both run as processes three times over the same backlog: throughput, CPU per request from
# /proc, first call) and the floor (10: a bare HTTP round trip to knotfake and a bare claim and
# finish with pgbench) and the purge (11, issue #12: a million finished rows pseudonymised and
# deleted beside the worker at full speed, claims timed with and without it; it turns the
# server's autovacuum on while it runs if it was off) and rate × burst × replicas (12, issue #19:
# RATE_LIMIT_RPS 1 to 3000, RATE_LIMIT_BURST 1, a tenth and the rate, 1 and 3 replicas, 12 s a
# cell: the fewest calls in any 10 s and the busiest second at knotfake, beside a bare
# rate.Limiter in one process as the floor; five and a half minutes) and the console (13, issue
# #22: each page's p50 and p99 at 10 million finished requests through the binary with basic
# auth, beside its bare statement and a bare page; about nine minutes, most of it building the
# rows). Prints each figure beside its goal and writes BENCHMARKS.md (figures, not a pass/fail
# test; about half an hour). BENCH_ONLY=1,3 runs sections.
bench:
	$(PG) $(GO) test -tags bench -run '^TestBench$$' -count=1 -v -timeout 50m ./cmd/erasure-worker

# The README's screenshots of the console (docs/console-*.png), taken by its browser test in
# Debian's chromium (apt-get install chromium) against a console serving a real database.
screenshots:
	CONSOLE_SCREENSHOTS=$(CURDIR)/docs $(PG) $(GO) test -run '^TestConsoleInABrowser$$' -count=1 ./cmd/erasure-worker

# The container image, built offline with podman from a binary built here (deploy/Dockerfile's
# FROM scratch target), then run: it must print `erasure-worker $(VERSION)` as non-root with a
# read-only root. With a registry: docker build -f deploy/Dockerfile --build-arg VERSION=... .
image:
	VERSION='$(VERSION)' GO='$(GO)' deploy/image/build

# deploy/ alone (also part of `make test`): kustomize renders and strict decoding, promtool
# check/test rules, the dashboard, and Prometheus scraping live workers (apt-get install prometheus).
check-deploy:
	$(GO) -C deploy test -count=1 ./...
	$(PG) $(GO) test -race -count=1 -run '^TestMonitoringEndToEnd$$' ./cmd/erasure-worker

clean:
	rm -rf bin
