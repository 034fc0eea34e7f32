#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs on a
# fresh Debian bookworm machine, runs the unit tests, then the lab tests on
# real Xen 4.17 inside QEMU. Lab artifacts are cached outside the checkout
# (XENLAB_CACHE, default /var/cache/xen-dm-go/lab), keyed by their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "host packages"
bash scripts/lab.sh deps

step "go vet"
go mod download
go vet ./...
go vet -tags xenlab ./...

step "unit tests (race detector)"
# shellcheck disable=SC2046
go test -race -count=1 $(go list ./... | grep -v '/tests')

step "lab tests (real Xen 4.17 in QEMU/TCG)"
go test -count=1 -v -timeout 80m ./tests/...
