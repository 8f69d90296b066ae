# pecgate: `make test` runs the whole suite against real Dovecot servers; when
# run as root it first installs what the tests need from Debian's packages.
GO ?= go
PKGS := dovecot-imapd dovecot-lmtpd isync curl python3 procps chromium postgresql
# systemd-analyze checks dist/pecgate.service (already there on most Debian systems).
PKGS += systemd

.PHONY: test deps bench build vet fmt docs

build:
	CGO_ENABLED=0 $(GO) build -o bin/pecgate ./cmd/pecgate

# docs regenerates docs/config.md and the configuration reference in
# README.md from the doc comments in config/*.go (a test fails when they
# are out of date).
docs:
	$(GO) run ./internal/configdoc

deps:
	@missing=""; \
	for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing (run 'make deps' as root, or: sudo apt-get install$$missing)"; \
	  fi; \
	fi

vet:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

test: deps vet
	$(GO) test -race -timeout 20m ./...

# Benchmarks print ratios against direct Dovecot, mbsync and a raw copy;
# they assert nothing. The UID map benchmarks (1,000,000 messages: bytes
# in the store, lookup ns/op) run with Go's default bench time.
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/...
	$(GO) test -run '^$$' -bench . -benchmem ./store
