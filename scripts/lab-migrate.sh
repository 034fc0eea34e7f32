#!/usr/bin/env bash
# The main job (README): build or reuse the lab (real Xen 4.17 + a Debian dom0 in QEMU/TCG), boot
# the test guest with xen-dm-go as its device model, save/restore it and live-migrate it to
# localhost with stock xl while its disk workload runs, then compare with qemu-xen in the same
# lab boot. Prints the RESULT lines; the run's logs stay under $XENLAB_CACHE/runs/.
#   XENLAB_MIGRATIONS=N   migrations in a row (default 3 here; the CI test uses 20)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
bash scripts/lab.sh deps
export XENLAB_MIGRATIONS=${XENLAB_MIGRATIONS:-3}
exec go test -count=1 -v -timeout 80m -run 'TestLabSaveRestoreMigrate$' ./tests/
