# shellcheck shell=bash
# Shared helpers for scripts/lab.sh and the artifact builders (sourced, not run).
#
# Nothing in here is part of an artifact's cache key: builders put everything that
# shapes their output into their own script text or into the inputs they hash
# (see lab_key). Changing a log message here therefore never triggers a rebuild.

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)          # scripts/lab
LAB_ROOT=$(cd "$LAB_DIR/../.." && pwd)                         # repository root
XENLAB_CACHE=${XENLAB_CACHE:-/var/cache/xen-dm-go/lab}
# The machine-wide lab lock (one lab at a time): in the cache directory unless set, e.g. to share
# one lock between several caches.
XENLAB_LOCK=${XENLAB_LOCK:-$XENLAB_CACHE/lock}
export XENLAB_CACHE XENLAB_LOCK

# Debian inputs. The dom0 and the guest use exactly these suites; versions are
# resolved from the host's apt lists (refresh them with `scripts/lab.sh deps`).
XENLAB_SUITE=${XENLAB_SUITE:-bookworm}
XENLAB_MIRROR=${XENLAB_MIRROR:-http://deb.debian.org/debian}
XENLAB_SECURITY_MIRROR=${XENLAB_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
export XENLAB_SUITE XENLAB_MIRROR XENLAB_SECURITY_MIRROR

# Debian packages whose versions key the artifacts.
LAB_PKGS=(xen-utils-4.17 xen-hypervisor-4.17-amd64 qemu-system-xen seabios linux-image-amd64 busybox-static syslinux)

lab_ts() { date +%H:%M:%S; }
lab_log() { echo "[lab $(lab_ts)] $*" >&2; }
lab_die() { echo "[lab $(lab_ts)] ERROR: $*" >&2; exit 1; }

# lab_tail FILE [N]: print the last N lines of a log, framed, to stderr.
lab_tail() {
	local f=$1 n=${2:-40}
	[ -f "$f" ] || return 0
	{
		echo "----- last $n lines of $f -----"
		tail -n "$n" "$f"
		echo "----- end of $f -----"
	} >&2
}

# lab_run_logged LOG TIMEOUT CMD...: run a step with a hard timeout, output to LOG.
# On failure print the log tail and return the command's status (124 = timeout).
lab_run_logged() {
	local log=$1 to=$2 rc=0
	shift 2
	echo "+ [$(lab_ts)] (timeout ${to}s) $*" >>"$log"
	setpriv --pdeathsig TERM timeout --kill-after=30 "$to" "$@" >>"$log" 2>&1 || rc=$?
	if [ $rc -ne 0 ]; then
		if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
			lab_log "step timed out after ${to}s: $*"
		else
			lab_log "step failed (rc=$rc): $*"
		fi
		lab_tail "$log" 40
	fi
	return $rc
}

# lab_lock NAME: take the exclusive lab lock (fd 9) unless the caller already holds it.
lab_lock() {
	[ "${XENLAB_LOCK_HELD:-}" = 1 ] && return 0
	mkdir -p "$XENLAB_CACHE" "$(dirname "$XENLAB_LOCK")"
	exec 9>>"$XENLAB_LOCK"
	if ! flock -n 9; then
		lab_log "waiting for the lab lock $XENLAB_LOCK (held by: $(cat "$XENLAB_LOCK.owner" 2>/dev/null || echo '?'))"
		flock -w "${XENLAB_LOCK_WAIT:-7200}" 9 || lab_die "could not take the lab lock within ${XENLAB_LOCK_WAIT:-7200}s"
	fi
	echo "pid $$ ($1) since $(date -Is)" >"$XENLAB_LOCK.owner"
	export XENLAB_LOCK_HELD=1
}

# ---------------------------------------------------------------------------
# Package versions (from the host's apt lists; no network).

declare -gA LAB_VER=()

lab_resolve_versions() {
	[ ${#LAB_VER[@]} -gt 0 ] && return 0
	local out pkg line
	out=$(LC_ALL=C timeout 120 apt-cache policy "${LAB_PKGS[@]}" 2>/dev/null) || lab_die "apt-cache policy failed"
	pkg=
	while IFS= read -r line; do
		case $line in
		[a-z0-9]*:) pkg=${line%:} ;;
		*"Candidate:"*)
			LAB_VER[$pkg]=$(echo "$line" | awk '{print $2}')
			;;
		esac
	done <<<"$out"
	for pkg in "${LAB_PKGS[@]}"; do
		case ${LAB_VER[$pkg]:-"(none)"} in
		"(none)") lab_die "no candidate version for $pkg in the host's apt lists (run: scripts/lab.sh deps)" ;;
		esac
	done
	LAB_VER[xen-source]=$(lab_source_version xen)
	[ -n "${LAB_VER[xen-source]}" ] || lab_die "no source package xen in $XENLAB_SUITE main (run: scripts/lab.sh deps, which adds deb-src)"
}

# lab_source_version SRC: the version of source package SRC in $XENLAB_SUITE main
# (apt-get source only serves the main suite's version, see docs/lab.md).
lab_source_version() {
	local f
	f=$(apt-get indextargets --format '$(FILENAME)' 'Identifier: Sources' "Suite: $XENLAB_SUITE" 'Component: main' 2>/dev/null | head -n1)
	[ -n "$f" ] && [ -e "$f" ] || f=$(apt-get indextargets --format '$(FILENAME)' 'Identifier: Sources' "Codename: $XENLAB_SUITE" 'Component: main' 2>/dev/null | head -n1)
	[ -n "$f" ] && [ -e "$f" ] || return 0
	/usr/lib/apt/apt-helper cat-file "$f" |
		awk -v p="$1" '$0=="Package: " p {want=1; next} /^$/ {want=0} want && !done && /^Version:/ {print $2; done=1}'
}

# ---------------------------------------------------------------------------
# Artifacts: $XENLAB_CACHE/<kind>/<key>/, built in $XENLAB_CACHE/tmp and renamed.

# lab_key FILE... -- STRING...: 16 hex digits of sha256 over the files' contents
# (named by basename, so the checkout's location does not matter) and the strings.
lab_key() {
	local f
	{
		while [ $# -gt 0 ] && [ "$1" != "--" ]; do
			f=$1
			shift
			[ -f "$f" ] || lab_die "key input missing: $f"
			printf '== file %s\n' "$(basename "$f")"
			cat "$f"
		done
		[ "${1:-}" = "--" ] && shift
		printf '== str %s\n' "$@"
	} | sha256sum | cut -c1-16
}

# Keys of the four artifacts. Each lists exactly what shapes its output.
lab_keys() {
	lab_resolve_versions
	local v_common="suite=$XENLAB_SUITE mirror=$XENLAB_MIRROR security=$XENLAB_SECURITY_MIRROR"
	KEY_ROOTFS=$(lab_key "$LAB_DIR/build-rootfs.sh" "$LAB_DIR/dom0/xenlab-init" -- "$v_common" \
		"xen-utils-4.17=${LAB_VER[xen-utils-4.17]}" "xen-hypervisor-4.17-amd64=${LAB_VER[xen-hypervisor-4.17-amd64]}" \
		"qemu-system-xen=${LAB_VER[qemu-system-xen]}" "seabios=${LAB_VER[seabios]}" "linux-image-amd64=${LAB_VER[linux-image-amd64]}")
	KEY_XEN_STOCK=$(lab_key "$LAB_DIR/build-xen-stock.sh" -- "$v_common" \
		"xen-hypervisor-4.17-amd64=${LAB_VER[xen-hypervisor-4.17-amd64]}")
	KEY_XEN_PAGING=$(lab_key "$LAB_DIR/build-xen-paging.sh" -- "$v_common" "xen-source=${LAB_VER[xen-source]}")
	KEY_GUEST=$(lab_key "$LAB_DIR/build-guest.sh" "$LAB_DIR/guest/init" "$LAB_DIR/guest/workload.sh" \
		"$LAB_DIR/guest/diskbench/main.go" "$LAB_DIR/guest/diskbench/hold.go" -- "$v_common" \
		"linux-image-amd64=${LAB_VER[linux-image-amd64]}" "busybox-static=${LAB_VER[busybox-static]}" "syslinux=${LAB_VER[syslinux]}")
	DIR_ROOTFS=$XENLAB_CACHE/rootfs/$KEY_ROOTFS
	DIR_XEN_STOCK=$XENLAB_CACHE/xen-stock/$KEY_XEN_STOCK
	DIR_XEN_PAGING=$XENLAB_CACHE/xen-paging/$KEY_XEN_PAGING
	DIR_GUEST=$XENLAB_CACHE/guest/$KEY_GUEST
}

# lab_versions_env: the resolved versions, as sourced-able lines for the builders.
lab_versions_env() {
	lab_resolve_versions
	echo "V_XEN_UTILS=${LAB_VER[xen-utils-4.17]}"
	echo "V_XEN_HYPERVISOR=${LAB_VER[xen-hypervisor-4.17-amd64]}"
	echo "V_QEMU_SYSTEM_XEN=${LAB_VER[qemu-system-xen]}"
	echo "V_SEABIOS=${LAB_VER[seabios]}"
	echo "V_LINUX_IMAGE=${LAB_VER[linux-image-amd64]}"
	echo "V_BUSYBOX_STATIC=${LAB_VER[busybox-static]}"
	echo "V_SYSLINUX=${LAB_VER[syslinux]}"
	echo "V_XEN_SOURCE=${LAB_VER[xen-source]}"
}

# lab_safe_rm DIR: remove a build directory that may still hold mounts from an
# interrupted chroot build; never crosses into another file system.
lab_safe_rm() {
	local d=$1 m
	[ -n "$d" ] && [ -d "$d" ] || return 0
	case $d in "$XENLAB_CACHE"/*) ;; *) lab_die "refusing to remove $d (outside $XENLAB_CACHE)" ;; esac
	# Deepest mounts first.
	for m in $(awk -v d="$d" 'index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	if awk -v d="$d" 'index($2, d "/") == 1 {f=1} END {exit !f}' /proc/self/mounts; then
		lab_die "still mounted below $d; not removing it"
	fi
	rm -rf --one-file-system "$d"
}

# lab_build KIND KEY FINALDIR BUILDER TIMEOUT: build an artifact unless FINALDIR exists.
# The builder gets an empty directory ($1) and must fill it; it is renamed into place
# only when the builder succeeded and left an "artifact.env" behind.
lab_build() {
	local kind=$1 key=$2 final=$3 builder=$4 to=$5
	if [ -d "$final" ] && [ -f "$final/artifact.env" ]; then
		lab_log "$kind: cached $final"
		return 0
	fi
	mkdir -p "$XENLAB_CACHE/tmp" "$XENLAB_CACHE/logs" "$(dirname "$final")"
	local tmp=$XENLAB_CACHE/tmp/$kind-$key.$$
	local log=$XENLAB_CACHE/logs/build-$kind-$key.log
	lab_safe_rm "$tmp"
	mkdir -p "$tmp/out" "$tmp/src"
	# Build from a snapshot of scripts/lab: editing the checkout during a build cannot change it.
	cp -a "$LAB_DIR/." "$tmp/src/"
	: >"$log"
	lab_log "$kind: building (key $key, log $log)"
	local t0 rc=0
	t0=$(date +%s)
	lab_run_logged "$log" "$to" env XENLAB_WORK="$tmp" bash "$tmp/src/$(basename "$builder")" "$tmp/out" || rc=$?
	if [ $rc -eq 0 ] && [ ! -f "$tmp/out/artifact.env" ]; then
		lab_log "$kind: builder exited 0 but left no artifact.env"
		lab_tail "$log" 40
		rc=1
	fi
	if [ $rc -ne 0 ]; then
		lab_safe_rm "$tmp"
		lab_log "$kind: FAILED after $(($(date +%s) - t0))s; full log: $log"
		return $rc
	fi
	{
		echo "KIND=$kind"
		echo "KEY=$key"
		echo "BUILD_SECONDS=$(($(date +%s) - t0))"
		echo "BUILT_AT=$(date -Is)"
	} >>"$tmp/out/artifact.env"
	cp "$log" "$tmp/out/build.log"
	[ -d "$final" ] && lab_safe_rm "$final" # a stale dir without artifact.env
	mv -T "$tmp/out" "$final"
	lab_safe_rm "$tmp"
	lab_log "$kind: built in $(($(date +%s) - t0))s -> $final"
}
