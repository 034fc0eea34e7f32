#!/bin/bash
# The xen-dm-go lab: real Xen 4.17 (+ a Debian dom0) inside qemu-system-x86_64 (TCG), built from
# Debian packages only. See docs/lab.md.
#
#   scripts/lab.sh deps                 install the host packages the lab needs (idempotent)
#   scripts/lab.sh build                build/reuse all artifacts in $XENLAB_CACHE
#   scripts/lab.sh paths                print the artifact directories (after build)
#   scripts/lab.sh run DIR              boot the lab on a prepared run directory (see below)
#   scripts/lab.sh scenario NAME [stock|paging]
#                                       run scripts/lab/scenarios/NAME.sh in a new run directory
#   scripts/lab.sh shell [stock|paging] interactive: a root shell in dom0 on this terminal
#   scripts/lab.sh console DIR          follow a running lab's Xen/dom0/guest console
#   scripts/lab.sh gc                   delete artifacts other than the current ones, old runs
#
# A run directory DIR holds DIR/xfer/ (what goes onto the xfer disk: scenario.sh or run.sh,
# your files) and optionally DIR/run.env (HYPERVISOR=stock|paging, TIMEOUT=seconds for the
# scenario, XEN_ARGS_EXTRA, DOM0_ARGS_EXTRA, QEMU_MEM_MB). `run` writes DIR/serial.log (Xen + dom0
# console), DIR/qemu.log, DIR/results/ (the dom0's /xfer/results), DIR/host-status.env.
# Exit status of `run`: 0 scenario passed, 1 scenario failed, 2 the lab itself failed.
#
# Environment: XENLAB_CACHE (default /var/cache/xen-dm-go/lab), XENLAB_LOCK (default
# $XENLAB_CACHE/lock), XENLAB_SMP (emulated CPUs, default 1), XENLAB_TCG_THREAD (multi|single),
# XENLAB_KEEP_XFER=1 (keep DIR/xfer.img of passing runs), XENLAB_APT_UPDATE=1 (deps: refresh
# the apt lists, which may change package versions and so artifact keys), XENLAB_TIMEOUT
# (scenario: seconds), XENLAB_JOBS (make -j for the Xen build).
set -euo pipefail
# shellcheck source=lab/common.sh
. "$(dirname "$0")/lab/common.sh"
trap 'lab_log "internal error: \"$BASH_COMMAND\" failed (status $?) at ${BASH_SOURCE[0]##*/}:$LINENO"' ERR

HOST_PKGS=(qemu-system-x86 qemu-utils debootstrap debian-archive-keyring e2fsprogs dosfstools mtools fdisk
	cpio gzip xz-utils kmod util-linux dpkg-dev build-essential bc flex bison python3)

cmd_deps() {
	local missing=() p quiet=${1:-}
	for p in "${HOST_PKGS[@]}"; do
		dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	local src=/etc/apt/sources.list.d/xenlab-src.sources need_update=0
	if [ -z "$(lab_source_version xen)" ]; then
		if [ ! -f "$src" ]; then
			lab_log "adding deb-src for $XENLAB_SUITE main ($src)"
			cat >"$src" <<EOF
# Added by xen-dm-go scripts/lab.sh deps: the lab rebuilds Xen from Debian's source package.
Types: deb-src
URIs: $XENLAB_MIRROR
Suites: $XENLAB_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
		fi
		need_update=1
	fi
	if [ ${#missing[@]} -gt 0 ] || [ $need_update = 1 ] || [ "${XENLAB_APT_UPDATE:-}" = 1 ]; then
		lab_log "apt-get update"
		timeout 600 apt-get update -q >/dev/null || lab_die "apt-get update failed"
	fi
	if [ ${#missing[@]} -gt 0 ]; then
		lab_log "installing host packages: ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
			lab_die "apt-get install ${missing[*]} failed"
	elif [ "$quiet" != --quiet ]; then
		lab_log "host packages present"
	fi
	[ -n "$(lab_source_version xen)" ] || lab_die "still no source package xen in $XENLAB_SUITE main after apt-get update"
}

cmd_build() {
	[ "$(id -u)" = 0 ] || lab_die "the lab build needs root (debootstrap, chroot, mount namespaces)"
	cmd_deps --quiet
	lab_keys
	if [ -f "$DIR_ROOTFS/artifact.env" ] && [ -f "$DIR_XEN_STOCK/artifact.env" ] &&
		[ -f "$DIR_XEN_PAGING/artifact.env" ] && [ -f "$DIR_GUEST/artifact.env" ]; then
		# Everything is cached: no lock needed (artifacts are immutable once renamed into place).
		lab_log "all artifacts cached"
		cmd_paths >"$XENLAB_CACHE/current.env.$$" && mv "$XENLAB_CACHE/current.env.$$" "$XENLAB_CACHE/current.env"
		cat "$XENLAB_CACHE/current.env" >&2
		return 0
	fi
	lab_lock build
	# Holding the lock, no other build runs: whatever is left in tmp/ is from an interrupted one.
	local d
	for d in "$XENLAB_CACHE"/tmp/*; do
		[ -e "$d" ] && { lab_log "removing the leftovers of an interrupted build: $d"; lab_safe_rm "$d"; }
	done
	local v
	while IFS= read -r v; do export "${v?}"; done < <(lab_versions_env)
	local t0 rc=0 bg=""
	t0=$(date +%s)
	# The rootfs (network + dpkg bound) runs alongside the others (CPU bound).
	if [ ! -f "$DIR_ROOTFS/artifact.env" ]; then
		setsid bash -c '. "$1/common.sh"; lab_build rootfs "$2" "$3" "$1/build-rootfs.sh" 3600' _ \
			"$LAB_DIR" "$KEY_ROOTFS" "$DIR_ROOTFS" &
		bg=$!
	else
		lab_log "rootfs: cached $DIR_ROOTFS"
	fi
	trap '[ -n "$bg" ] && kill -- -"$bg" 2>/dev/null; exit 1' INT TERM
	lab_build xen-stock "$KEY_XEN_STOCK" "$DIR_XEN_STOCK" "$LAB_DIR/build-xen-stock.sh" 600 || rc=1
	[ $rc = 0 ] && { lab_build guest "$KEY_GUEST" "$DIR_GUEST" "$LAB_DIR/build-guest.sh" 1200 || rc=1; }
	[ $rc = 0 ] && { lab_build xen-paging "$KEY_XEN_PAGING" "$DIR_XEN_PAGING" "$LAB_DIR/build-xen-paging.sh" 3600 || rc=1; }
	if [ -n "$bg" ]; then
		if [ $rc != 0 ]; then
			kill -- -"$bg" 2>/dev/null || true
			wait "$bg" || true
		else
			wait "$bg" || rc=1
		fi
	fi
	trap - INT TERM
	[ $rc = 0 ] || lab_die "build failed after $(($(date +%s) - t0))s (logs in $XENLAB_CACHE/logs)"
	cmd_paths >"$XENLAB_CACHE/current.env"
	lab_log "all artifacts ready in $(($(date +%s) - t0))s"
	cat "$XENLAB_CACHE/current.env" >&2
}

cmd_paths() {
	lab_keys
	echo "XENLAB_CACHE=$XENLAB_CACHE"
	echo "ROOTFS=$DIR_ROOTFS"
	echo "XEN_STOCK=$DIR_XEN_STOCK"
	echo "XEN_PAGING=$DIR_XEN_PAGING"
	echo "GUEST=$DIR_GUEST"
}

# prepare_xfer DIR: complete DIR/xfer with the lab's own files.
prepare_xfer() {
	local dir=$1 x=$1/xfer
	mkdir -p "$x/xenlab"
	install -m 0755 "$LAB_DIR/dom0/stage2.sh" "$x/xenlab/stage2.sh"
	install -m 0644 "$LAB_DIR/dom0/lib.sh" "$x/lib.sh"
	if [ ! -f "$x/run.sh" ] && [ -f "$x/scenario.sh" ]; then
		cat >"$x/run.sh" <<'EOF'
#!/bin/bash
# Generated by scripts/lab.sh run: the scenario's environment, lib.sh, then the scenario.
set -eEuo pipefail
cd /xfer
set -a
[ -f /xfer/env ] && . /xfer/env
set +a
. /xfer/lib.sh
on_err() {
	local rc=$1 where=$2 cmd=$3 msg
	[ -e /run/xenlab/failed ] && return 0
	touch /run/xenlab/failed
	msg="'$cmd' failed (status $rc) at $where"
	[ -s /run/xenlab/errors ] && msg="$msg: $(tail -n1 /run/xenlab/errors)"
	log "FAIL: $msg"
	echo "$msg" >>"$R/failures.txt"
}
trap 'on_err $? "${BASH_SOURCE[0]##*/}:$LINENO" "$BASH_COMMAND"' ERR
log "scenario $(cat /xfer/scenario.name 2>/dev/null) starts (hypervisor $(cat /xfer/hypervisor 2>/dev/null))"
. /xfer/scenario.sh
log "scenario completed"
EOF
	fi
	if [ ! -e "$x/guest.img" ]; then
		ln "$DIR_GUEST/guest.img" "$x/guest.img" 2>/dev/null || cp --sparse=always "$DIR_GUEST/guest.img" "$x/guest.img"
	fi
	cp "$DIR_GUEST/guest.env" "$x/guest.env"
	echo "$TIMEOUT" >"$x/timeout"
	echo "$HYPERVISOR" >"$x/hypervisor"
	{
		echo "rootfs=$KEY_ROOTFS"
		echo "guest=$KEY_GUEST"
		echo "xen=$XEN_DIR"
	} >"$x/artifacts"
}

cmd_run() {
	local dir=${1:?usage: lab.sh run DIR}
	dir=$(cd "$dir" && pwd)
	[ -d "$dir/xfer" ] || lab_die "$dir/xfer missing"
	HYPERVISOR=stock TIMEOUT=1800 XEN_ARGS_EXTRA="" DOM0_ARGS_EXTRA="" QEMU_MEM_MB=6144 INTERACTIVE=0
	# One emulated CPU by default: with -smp 2 (MTTCG) HVM guests triple-faulted after 3 of 7
	# localhost migrations (guest state replaced by Xen's, see docs/lab.md); with -smp 1, 0 of 12.
	TCG_THREAD=${XENLAB_TCG_THREAD:-multi} SMP=${XENLAB_SMP:-1}
	# shellcheck disable=SC1091
	[ -f "$dir/run.env" ] && . "$dir/run.env"
	lab_keys
	case $HYPERVISOR in
	stock) XEN_DIR=$DIR_XEN_STOCK ;;
	paging) XEN_DIR=$DIR_XEN_PAGING ;;
	*) lab_die "HYPERVISOR must be stock or paging, not '$HYPERVISOR'" ;;
	esac
	local a
	for a in "$DIR_ROOTFS" "$DIR_GUEST" "$XEN_DIR"; do
		if [ ! -f "$a/artifact.env" ]; then
			# E.g. scripts/lab changed since the caller's build: build what is missing now.
			lab_log "artifact $a is not built yet; building"
			cmd_build || lab_die "building the artifacts failed"
			break
		fi
	done
	[ "$INTERACTIVE" = 1 ] || [ -f "$dir/xfer/run.sh" ] || [ -f "$dir/xfer/scenario.sh" ] ||
		lab_die "$dir/xfer has neither run.sh nor scenario.sh"
	lab_lock "run $dir"
	prepare_xfer "$dir"
	[ "$INTERACTIVE" = 1 ] && touch "$dir/xfer/interactive"

	rm -rf "$dir/results" "$dir/xfer.img" "$dir/serial.log" "$dir/qemu.log" "$dir/host-status.env"
	local mb
	mb=$(du -sm --apparent-size "$dir/xfer" | cut -f1)
	mb=$((mb + ${XFER_FREE_MB:-3072}))
	lab_log "xfer disk: ${mb} MiB (ext4 -d $dir/xfer)"
	timeout 600 mkfs.ext4 -q -F -L xenlab-xfer -E root_owner=0:0 -d "$dir/xfer" "$dir/xfer.img" "${mb}M" ||
		lab_die "mkfs.ext4 of the xfer disk failed"

	local xen_args="dom0_mem=2048M,max:2048M dom0_max_vcpus=$SMP console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all console_timestamps=boot $XEN_ARGS_EXTRA"
	local dom0_args="root=/dev/vda rw rootfstype=ext4 console=hvc0 earlyprintk=xen panic=10 init=/sbin/xenlab-init $DOM0_ARGS_EXTRA"
	case $dom0_args in *,*) lab_die "DOM0_ARGS_EXTRA must not contain commas (QEMU multiboot module syntax)" ;; esac
	local qto=$((TIMEOUT + ${XENLAB_BOOT_MARGIN:-360}))
	local serial=(-serial "file:$dir/serial.log")
	local tty_opts=()
	if [ "$INTERACTIVE" = 1 ]; then
		serial=(-chardev "stdio,id=con0,mux=on,signal=off,logfile=$dir/serial.log" -serial chardev:con0 -mon chardev=con0 -echr 20)
		qto=$((24 * 3600))
	fi
	local qemu=(qemu-system-x86_64 -nodefaults -machine pc -accel "tcg,thread=$TCG_THREAD" -cpu qemu64,+svm,+npt -smp "$SMP"
		-m "$QEMU_MEM_MB" -display none -no-reboot "${serial[@]}"
		-kernel "$XEN_DIR/xen" -append "$xen_args"
		-initrd "$DIR_ROOTFS/vmlinuz $dom0_args,$DIR_ROOTFS/initrd.img"
		-drive "file=$DIR_ROOTFS/rootfs.ext4,if=virtio,format=raw,snapshot=on"
		-drive "file=$dir/xfer.img,if=virtio,format=raw,cache=writeback")
	if [ "$INTERACTIVE" != 1 ]; then
		# The monitor socket (unix socket paths are limited to 107 bytes).
		local mon=$dir/monitor.sock
		[ ${#mon} -gt 100 ] && mon=/tmp/xenlab-monitor-$$.sock
		echo "$mon" >"$dir/monitor.path"
		qemu+=(-monitor "unix:$mon,server=on,wait=off")
	fi
	printf '%q ' "${qemu[@]}" >"$dir/qemu.cmd"
	echo >>"$dir/qemu.cmd"
	lab_log "booting Xen ($HYPERVISOR) + dom0 under TCG; scenario timeout ${TIMEOUT}s, QEMU timeout ${qto}s; console: tail -f $dir/serial.log"
	local t0 qrc=0
	t0=$(date +%s)
	if [ "$INTERACTIVE" = 1 ]; then
		"${qemu[@]}" "${tty_opts[@]}" || qrc=$?
	else
		# pdeathsig: QEMU goes down with this script even if it is SIGKILLed (e.g. by a test timeout).
		setpriv --pdeathsig TERM timeout --kill-after=20 "$qto" "${qemu[@]}" </dev/null >"$dir/qemu.log" 2>&1 || qrc=$?
	fi
	local secs=$(($(date +%s) - t0)) qto_hit=0
	{ [ $qrc = 124 ] || [ $qrc = 137 ]; } && qto_hit=1
	lab_log "QEMU exited with status $qrc after ${secs}s$([ $qto_hit = 1 ] && echo " (KILLED: exceeded ${qto}s)")"

	# rdump creates $dir/results itself
	if ! timeout 600 debugfs -R "rdump /results $dir" "$dir/xfer.img" >"$dir/debugfs.log" 2>&1; then
		lab_log "debugfs rdump failed: $(tail -n3 "$dir/debugfs.log")"
	fi
	[ -d "$dir/results" ] || lab_log "no results came back from the xfer disk: $(grep -v '^debugfs [0-9]' "$dir/debugfs.log" | tail -n3)"
	{
		echo "qemu_rc=$qrc"
		echo "qemu_timed_out=$qto_hit"
		echo "qemu_seconds=$secs"
		echo "hypervisor=$HYPERVISOR"
		echo "xen=$XEN_DIR"
		echo "rootfs=$DIR_ROOTFS"
		echo "guest=$DIR_GUEST"
	} >"$dir/host-status.env"
	# The xfer image holds a copy of the guest disk: keep it only when asked or on failure.
	local rc=2
	if [ -f "$dir/results/status.env" ] && grep -qx 'rc=0' "$dir/results/status.env"; then
		rc=0
	elif [ -f "$dir/results/status.env" ] && grep -q '^rc=' "$dir/results/status.env"; then
		rc=1
	fi
	[ $rc = 0 ] && [ "${XENLAB_KEEP_XFER:-0}" != 1 ] && rm -f "$dir/xfer.img"
	case $rc in
	0) lab_log "run passed: $dir/results" ;;
	1)
		lab_log "SCENARIO FAILED: $(cat "$dir/results/failures.txt" 2>/dev/null | tail -n3 | tr '\n' ' ')"
		lab_tail "$dir/results/run.log" 30
		;;
	*)
		lab_log "LAB FAILED: no scenario status came back (dom0 did not boot or crashed?)"
		grep -nE 'Panic|PANIC|FATAL|crash|Kernel panic|BUG:|Oops|Unhandled|not syncing|WATCHDOG' "$dir/serial.log" 2>/dev/null | head -n 20 >&2 || true
		lab_tail "$dir/serial.log" 30
		;;
	esac
	return $rc
}

cmd_scenario() {
	local name=${1:?usage: lab.sh scenario NAME [stock|paging]} hv=${2:-stock}
	local f=$LAB_DIR/scenarios/$name.sh
	[ -f "$f" ] || lab_die "no scenario $f"
	cmd_build
	local dir
	dir=$XENLAB_CACHE/runs/manual-$name-$(date +%Y%m%d-%H%M%S)
	mkdir -p "$dir/xfer"
	cp "$f" "$dir/xfer/scenario.sh"
	echo "$name" >"$dir/xfer/scenario.name"
	# The scenarios that run xen-dm-go take it from /xfer/bin (the Go tests put it there): build
	# it from this checkout.
	mkdir -p "$dir/xfer/bin"
	(cd "$LAB_DIR/../.." && PATH=$PATH:/usr/local/go/bin CGO_ENABLED=0 go build -o "$dir/xfer/bin/xen-dm-go" ./cmd/xen-dm-go) ||
		lab_die "cannot build xen-dm-go for the scenario"
	printf 'HYPERVISOR=%s\nTIMEOUT=%s\n' "$hv" "${XENLAB_TIMEOUT:-1800}" >"$dir/run.env"
	lab_log "run directory $dir"
	cmd_run "$dir"
}

cmd_shell() {
	local hv=${1:-stock}
	cmd_build
	local dir
	dir=$XENLAB_CACHE/runs/shell-$(date +%Y%m%d-%H%M%S)
	mkdir -p "$dir/xfer"
	printf 'HYPERVISOR=%s\nTIMEOUT=86400\nINTERACTIVE=1\n' "$hv" >"$dir/run.env"
	cat >&2 <<EOF
[lab] Interactive lab: Xen + dom0 on this terminal (log: $dir/serial.log).
[lab] In dom0: the daemons are started; lib.sh is at /xfer/lib.sh (". /xfer/lib.sh"), the guest disk
[lab] at /xfer/guest.img. Try: mkcfg g1 && guest_create g1 && tail -f /xfer/results/guest-g1.log
[lab] or: xl create /etc/xen/g1.cfg; xl console g1 (Ctrl-] leaves xl console).
[lab] Ctrl-T x quits QEMU, Ctrl-T c toggles the QEMU monitor; Ctrl-A x3 switches the input to Xen.
EOF
	cmd_run "$dir" || true
}

cmd_console() {
	local dir=${1:-}
	if [ -z "$dir" ]; then
		dir=$(ls -td "$XENLAB_CACHE"/runs/*/ 2>/dev/null | head -n1)
		[ -n "$dir" ] || lab_die "no run directory in $XENLAB_CACHE/runs"
	fi
	lab_log "following $dir/serial.log (Xen, dom0 and '[guest NAME]' lines; Ctrl-C stops)"
	exec tail -n +1 -F "$dir/serial.log"
}

cmd_gc() {
	lab_keys
	lab_lock gc
	local kind d keep
	for kind in rootfs xen-stock xen-paging guest; do
		case $kind in
		rootfs) keep=$DIR_ROOTFS ;; xen-stock) keep=$DIR_XEN_STOCK ;;
		xen-paging) keep=$DIR_XEN_PAGING ;; guest) keep=$DIR_GUEST ;;
		esac
		for d in "$XENLAB_CACHE/$kind"/*; do
			[ -d "$d" ] && [ "$d" != "$keep" ] && { lab_log "removing $d"; lab_safe_rm "$d"; }
		done
	done
	for d in "$XENLAB_CACHE"/tmp/*; do [ -e "$d" ] && lab_safe_rm "$d"; done
	ls -td "$XENLAB_CACHE"/runs/*/ 2>/dev/null | tail -n +"$((${XENLAB_KEEP_RUNS:-10} + 1))" | while read -r d; do
		lab_log "removing run $d"
		lab_safe_rm "${d%/}"
	done
}

# Everything runs from main, and the last line exits: bash reads scripts as it runs them, so
# editing this file while a lab runs must not make a running instance read the new text.
main() {
	local rc=0
	case ${1:-} in
	deps) cmd_deps ;;
	build) cmd_build ;;
	paths) cmd_paths ;;
	run)
		shift
		cmd_run "$@" || rc=$?
		;;
	scenario)
		shift
		cmd_scenario "$@" || rc=$?
		;;
	shell) shift && cmd_shell "$@" ;;
	console) shift && cmd_console "$@" ;;
	gc) cmd_gc ;;
	*)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		rc=2
		;;
	esac
	return $rc
}

rc=0; main "$@" || rc=$?; exit $rc
