# shellcheck shell=bash
# lib.sh — helpers for lab scenarios. Runs inside the lab's dom0; /xfer/run.sh sources it
# before the scenario script. Every helper that waits has a timeout; helpers return non-zero
# (and log an "ERROR:" line) on failure, so under `set -e` (run.sh sets it) a failing helper
# ends the scenario and the failure is reported with the relevant log lines.
#
# Layout on the xfer disk (mounted at /xfer):
#   /xfer/run.sh, /xfer/scenario.sh, /xfer/lib.sh, /xfer/env (scenario environment),
#   /xfer/guest.img + /xfer/guest.env (the test guest's disk, a per-run copy), /xfer/<your files>
#   /xfer/results/   everything in here comes back to the host (values.env, logs, captured data)

XFER=${XFER:-/xfer}
R=${R:-$XFER/results}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
export PYTHONPATH=/usr/lib/xen-4.17/lib/python${PYTHONPATH:+:$PYTHONPATH}
export XENSTORED_ROOTDIR=/run/xenstored
mkdir -p "$R" /run/xenlab

STOCK_DM=/usr/libexec/xen-qemu-system-i386
GUEST_IMG=$XFER/guest.img
# shellcheck disable=SC1091
[ -f "$XFER/guest.env" ] && . "$XFER/guest.env"

# Timeouts in seconds (a scenario may override them before calling the helpers).
: "${XL_CREATE_TIMEOUT:=180}" "${XL_SAVE_TIMEOUT:=600}" "${XL_RESTORE_TIMEOUT:=600}"
: "${XL_MIGRATE_TIMEOUT:=900}" "${XL_TIMEOUT:=60}" "${GUEST_BOOT_TIMEOUT:=900}"
: "${GUEST_ROUND_TIMEOUT:=300}" "${GUEST_STOP_TIMEOUT:=300}"

# ---------------------------------------------------------------- basics

now() { date +%s.%N; }
uptime_s() {
	local u _
	read -r u _ </proc/uptime
	echo "$u"
}
# elapsed T0 [T1]: seconds between two `now` values, one decimal.
elapsed() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.1f\n", b - a }'; }
log() { echo "[xenlab +$(uptime_s)s] $*"; }
# error MSG: log an error line and remember it as the reason of a failure that follows.
error() {
	log "ERROR: $*"
	echo "$*" >>/run/xenlab/errors
}
# fail MSG: record a failure and end the scenario (exit status 1).
fail() {
	log "FAIL: $*"
	echo "$*" >>"$R/failures.txt"
	exit 1
}
# result KEY VALUE: a measured value for the host (results/values.env; the harness's Result.Values).
result() {
	echo "$1=$2" >>"$R/values.env"
	log "result $1=$2"
}
# timed CMD...: run CMD (its output goes to stderr, i.e. the run log) and print the wall time
# in seconds on stdout; returns CMD's status. Use as: secs=$(timed xlc save g1 /tmp/g1.save)
timed() {
	local t0 rc=0
	t0=$(now)
	"$@" >&2 || rc=$?
	elapsed "$t0"
	return $rc
}
# retry_until TIMEOUT CMD...: re-run CMD every 0.5 s until it succeeds or TIMEOUT seconds passed.
retry_until() {
	local to=$1 t0
	shift
	t0=$(date +%s)
	until "$@"; do
		[ $(($(date +%s) - t0)) -ge "$to" ] && return 1
		sleep 0.5
	done
}

# ---------------------------------------------------------------- xen toolstack

# start_daemons: xenstored, xen-init-dom0, xenconsoled (no systemd in the lab's dom0).
start_daemons() {
	mkdir -p /run/xenstored /run/xen /var/log/xen/console /var/lib/xen /var/run/xen-hotplug
	log "starting xenstored"
	timeout 30 xenstored --pid-file /run/xenstored.pid || { error "xenstored failed to start"; return 1; }
	retry_until 30 xenstore-read -s / >/dev/null 2>&1 || { error "xenstored not answering after 30s"; return 1; }
	timeout 60 xen-init-dom0 >"$R/xen-init-dom0.log" 2>&1 || {
		cat "$R/xen-init-dom0.log"
		error "xen-init-dom0 failed"
		return 1
	}
	timeout 30 xenconsoled --pid-file /run/xenconsoled.pid --log=all --log-dir=/var/log/xen/console ||
		{ error "xenconsoled failed to start"; return 1; }
	timeout "$XL_TIMEOUT" xl info >"$R/xl-info.txt" 2>&1 || { error "xl info failed: $(tail -3 "$R/xl-info.txt")"; return 1; }
	log "daemons up: $(grep -E '^(xen_version|virt_caps|free_memory)' "$R/xl-info.txt" | tr -s ' ' | tr '\n' ';')"
	result xen_version "$(awk -F': ' '/^xen_version/ {print $2}' "$R/xl-info.txt")"
	result virt_caps "$(awk -F': ' '/^virt_caps/ {print $2}' "$R/xl-info.txt" | tr ' ' ',')"
}

# xlc OP ARGS...: run `xl -vvv OP ARGS...` with a timeout for OP; full output in
# $R/xl/NN-OP.log; on failure log the error lines and return xl's status (124: timeout).
# stamp: prefix each line of stdin with the UTC wall-clock time to the millisecond, as the
# device models' logs have it (no fork per line).
stamp() {
	local l t f
	while IFS= read -r l || [ -n "$l" ]; do
		t=$EPOCHREALTIME
		f=${t#*.}
		TZ=UTC printf '%(%H:%M:%S)T.%s %s\n' "${t%.*}" "${f:0:3}" "$l"
	done
}

xlc() {
	local op=$1 to n logf rc=0
	shift
	case $op in
	create) to=$XL_CREATE_TIMEOUT ;;
	save) to=$XL_SAVE_TIMEOUT ;;
	restore) to=$XL_RESTORE_TIMEOUT ;;
	migrate) to=$XL_MIGRATE_TIMEOUT ;;
	*) to=$XL_TIMEOUT ;;
	esac
	mkdir -p "$R/xl"
	n=$(($(cat /run/xenlab/xlseq 2>/dev/null || echo 0) + 1))
	echo $n >/run/xenlab/xlseq
	logf=$R/xl/$(printf %02d "$n")-$op.log
	log "xl $op $* (timeout ${to}s, log ${logf#"$XFER"/})"
	# each line stamped with dom0's wall clock (as the device models' logs are), so the phases
	# of a save or migration line up with the device model's log
	timeout -k 10 "$to" xl -vvv "$op" "$@" 2>&1 | stamp >"$logf"
	rc=${PIPESTATUS[0]}
	if [ $rc -ne 0 ]; then
		{ grep -iE 'error|fail|warn|timed out' "$logf" || true; } | tail -n 25 | sed 's/^/    | /'
		if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
			error "xl $op $* timed out after ${to}s"
		else
			error "xl $op $* failed with status $rc"
		fi
		return $rc
	fi
}

# domid NAME: print the domain id of NAME (fails if there is no such domain).
domid() { timeout "$XL_TIMEOUT" xl domid "$1" 2>/dev/null; }

# mkcfg NAME [DM] [MEMORY_MB] [DISK]: write /etc/xen/NAME.cfg for the test guest and print its
# path. DM defaults to the stock qemu-xen; DISK to the run's copy of the guest disk. Extra xl.cfg
# lines can be passed in $MKCFG_EXTRA (e.g. MKCFG_EXTRA='hap=0').
mkcfg() {
	local name=$1 dm=${2:-$STOCK_DM} mem=${3:-${GUEST_MEM:-256}} disk=${4:-$GUEST_IMG}
	[ -x "$dm" ] || { error "device model $dm is not executable"; return 1; }
	[ -f "$disk" ] || { error "guest disk $disk missing"; return 1; }
	cat >"/etc/xen/$name.cfg" <<EOF
name="$name"
type="hvm"
memory=$mem
vcpus=1
disk=['format=raw,vdev=hda,access=rw,target=$disk']
device_model_version="qemu-xen"
device_model_override="$dm"
serial="pty"
vnc=0
sdl=0
nographic=1
vga="${GUEST_VGA:-none}"
xen_platform_pci=0
boot="c"
on_poweroff="destroy"
on_reboot="destroy"
on_crash="destroy"
${MKCFG_EXTRA:-}
EOF
	cp "/etc/xen/$name.cfg" "$R/$name.cfg"
	echo "/etc/xen/$name.cfg"
}

# guest_create NAME: create the domain from /etc/xen/NAME.cfg paused, attach the serial
# capture, then unpause (so no console output is lost).
guest_create() {
	local name=$1
	xlc create -p "/etc/xen/$name.cfg" || return 1
	capture_serial "$name" || return 1
	xlc unpause "$name" || return 1
}

# capture_serial DOM: (re)start reading DOM's serial console (the device model's pty, from
# xenstore /local/domain/<id>/serial/0/tty) into $R/guest-DOM.log, one line per console
# line prefixed with dom0's uptime; also echoed to dom0's console as "[guest DOM] ...".
# Call it again after restore/migrate: the new device model has a new pty.
capture_serial() {
	local dom=$1 id tty="" i
	id=$(domid "$dom") || { error "capture_serial: no domain $dom"; return 1; }
	for i in $(seq 1 80); do
		tty=$(xenstore-read "/local/domain/$id/serial/0/tty" 2>/dev/null) && [ -n "$tty" ] && break
		sleep 0.25
	done
	[ -n "$tty" ] && [ -e "$tty" ] || { error "capture_serial: no serial pty for $dom (domid $id)"; return 1; }
	stop_capture "$dom"
	echo "$id" >"/run/xenlab/domid-$dom"
	stty -F "$tty" raw -echo 2>/dev/null || true
	echo "== $(uptime_s) capture of $dom (domid $id) from $tty" >>"$R/guest-$dom.log"
	(
		exec </dev/null >/dev/null 2>&1
		while IFS= read -r line; do
			line=${line%$'\r'}
			printf '%s %s\n' "$(uptime_s)" "$line" >>"$R/guest-$dom.log"
			printf '[guest %s] %s\n' "$dom" "$line" >/dev/hvc0
		done <"$tty"
	) &
	echo $! >"/run/xenlab/serial-$dom.pid"
	echo "$tty" >"/run/xenlab/serial-$dom.tty"
	log "capturing $dom (domid $id) console $tty -> ${R#"$XFER"/}/guest-$dom.log"
}

stop_capture() {
	local p
	p=$(cat "/run/xenlab/serial-$1.pid" 2>/dev/null) || return 0
	kill "$p" 2>/dev/null || true
	rm -f "/run/xenlab/serial-$1.pid"
}

# guest_send DOM TEXT: type a line into DOM's serial console.
guest_send() {
	local tty
	tty=$(cat "/run/xenlab/serial-$1.tty" 2>/dev/null) || { error "guest_send: no capture for $1"; return 1; }
	printf '%s\n' "$2" >"$tty"
}

# guest_round DOM: the last workload round DOM reported (empty if none yet).
guest_round() {
	{ grep -o 'XENLAB-GUEST round=[0-9]*' "$R/guest-$1.log" 2>/dev/null || true; } | tail -n1 | cut -d= -f2
}

# guest_tail DOM [N]: the last N console lines of DOM.
guest_tail() {
	echo "    --- last ${2:-15} console lines of $1:"
	{ tail -n "${2:-15}" "$R/guest-$1.log" 2>/dev/null || true; } | sed 's/^/    | /'
	return 0
}

# domain_gone DOM: log why DOM is no longer there (hypervisor lines about it: triple faults,
# crashes; the xl log's shutdown reason) and the console tail. Always returns 1.
domain_gone() {
	local dom=$1 id
	id=$(cat "/run/xenlab/domid-$dom" 2>/dev/null || echo "?")
	guest_tail "$dom" 20
	{ timeout 20 xl dmesg 2>/dev/null || true; } | { grep -E "d${id}v[0-9]|Dom${id} |[Dd]omain ${id} " || true; } |
		grep -vE 'upcall vector|HVM d[0-9]+v?[0-9]* save:|HVM[0-9]+ restore:' | tail -n 12 | sed 's/^/    | xen: /'
	{ grep -hE 'has shut down|reason code|crash' "/var/log/xen/xl-$dom.log" 2>/dev/null || true; } | tail -n 3 | sed 's/^/    | xl: /'
	{ timeout 20 xl list 2>&1 || true; } | sed 's/^/    | /'
	return 1
}

# guest_check DOM: fail if the guest reported an error, a fatal condition or a kernel panic.
guest_check() {
	local bad
	bad=$({ grep -E 'XENLAB-GUEST .*errors=[1-9]|XENLAB-GUEST fatal|Kernel panic|BUG:|Oops' "$R/guest-$1.log" 2>/dev/null || true; } | head -n3)
	if [ -n "$bad" ]; then
		guest_tail "$1" 20
		error "guest $1 reported a failure: $(echo "$bad" | head -n1 | cut -d' ' -f2-)"
		return 1
	fi
}

# wait_guest_round DOM N [TIMEOUT]: wait until DOM's workload reports round N (or later) with
# no errors. Fails early if the guest reports errors/panics or the domain disappears.
wait_guest_round() {
	local dom=$1 n=$2 to=${3:-$GUEST_ROUND_TIMEOUT} t0 r
	t0=$(date +%s)
	log "waiting up to ${to}s for $dom to reach round $n (now at round $(guest_round "$dom"))"
	while :; do
		r=$(guest_round "$dom")
		guest_check "$dom" || return 1
		if [ -n "$r" ] && [ "$r" -ge "$n" ]; then
			log "$dom at round $r after $(($(date +%s) - t0))s"
			return 0
		fi
		if ! domid "$dom" >/dev/null; then
			domain_gone "$dom" || true
			error "domain $dom (domid $(cat "/run/xenlab/domid-$dom" 2>/dev/null)) disappeared while waiting for round $n (last round ${r:-none})"
			return 1
		fi
		if [ $(($(date +%s) - t0)) -ge "$to" ]; then
			guest_tail "$dom" 20
			{ timeout 20 xl list 2>&1 || true; } | sed 's/^/    | /'
			error "timeout: $dom did not reach round $n within ${to}s (last round ${r:-none})"
			return 1
		fi
		sleep 1
	done
}

# guest_stop DOM [TIMEOUT]: ask the workload to stop (over the serial console); it re-verifies
# every file it has (shipped + written), prints "XENLAB-GUEST final ok=1 errors=0 ...",
# unmounts and powers off. Returns non-zero unless the final verification passed.
guest_stop() {
	local dom=$1 to=${2:-$GUEST_STOP_TIMEOUT} t0 line
	t0=$(date +%s)
	guest_check "$dom" || return 1
	log "asking $dom to stop"
	# "stop" three times: busybox's `read -t` can time out in the middle of a line and eat its
	# first characters; the guest matches "stop" anywhere in what it reads.
	guest_send "$dom" "stop stop stop" || return 1
	local last_send
	last_send=$(date +%s)
	while :; do
		line=$({ grep 'XENLAB-GUEST final' "$R/guest-$dom.log" 2>/dev/null || true; } | tail -n1)
		[ -n "$line" ] && break
		guest_check "$dom" || return 1
		if ! domid "$dom" >/dev/null; then
			sleep 1 # the final line may still be on its way
			grep -q 'XENLAB-GUEST final' "$R/guest-$dom.log" 2>/dev/null && continue
			domain_gone "$dom" || true
			error "domain $dom disappeared before finishing its final verification"
			return 1
		fi
		if [ $(($(date +%s) - t0)) -ge "$to" ]; then
			guest_tail "$dom" 20
			error "timeout: $dom did not finish its final verification within ${to}s"
			return 1
		fi
		# Repeat the request now and then in case it got lost (the final verification itself
		# takes ~30 s: 80 MiB read and hashed).
		if [ $(($(date +%s) - last_send)) -ge 60 ]; then
			log "repeating the stop request to $dom"
			guest_send "$dom" "stop stop stop" || true
			last_send=$(date +%s)
		fi
		sleep 1
	done
	log "$dom: ${line#* }"
	retry_until 60 sh -c "! xl domid $dom >/dev/null 2>&1" || {
		log "$dom did not power off by itself; destroying it"
		xlc destroy "$dom" || true
	}
	stop_capture "$dom"
	if [[ " $line " == *" ok=1 "* ]] && [[ " $line " == *" errors=0 "* ]]; then
		return 0
	fi
	guest_tail "$dom" 20
	error "$dom final verification failed: ${line#*XENLAB-GUEST }"
	return 1
}

# guest_bench DOM [TIMEOUT]: run the guest's O_DIRECT read benchmark (workload command
# "benchN") and print its result line's key=value fields ("seq_mbps=… rand_iops=…") on stdout;
# progress and errors go to stderr (the run log).
guest_bench() {
	local dom=$1 to=${2:-600} tok before t0 last_send line=""
	tok=bench$(date +%s)
	before=$({ grep -c 'XENLAB-GUEST bench' "$R/guest-$dom.log" 2>/dev/null || true; })
	{
		t0=$(date +%s)
		log "asking $dom to run its read benchmark ($tok)"
		guest_send "$dom" "$tok $tok $tok" || return 1
		last_send=$t0
		while :; do
			line=$({ grep 'XENLAB-GUEST bench' "$R/guest-$dom.log" 2>/dev/null || true; } | sed -n "$((${before:-0} + 1)),\$p" | head -n1)
			[ -n "$line" ] && break
			guest_check "$dom" || return 1
			if [ $(($(date +%s) - t0)) -ge "$to" ]; then
				guest_tail "$dom" 20
				error "timeout: $dom did not report its benchmark within ${to}s"
				return 1
			fi
			if [ $(($(date +%s) - last_send)) -ge 90 ]; then
				guest_send "$dom" "$tok $tok $tok" || true # the guest runs each token once
				last_send=$(date +%s)
			fi
			sleep 1
		done
		case $line in
		*"XENLAB-GUEST bench "*) log "$dom: ${line#*XENLAB-GUEST }" ;;
		*) guest_tail "$dom" 10; error "$dom: benchmark failed: ${line#*XENLAB-GUEST }"; return 1 ;;
		esac
	} >&2
	echo "${line#*XENLAB-GUEST bench }"
}

# guest_hold DOM SECS: start the guest's adversary (workload command "holdS-N", `diskbench
# hold`): for SECS seconds it overwrites scratch/hold.bin on the disk while keeping a DMA-read
# copy of it in memory that must never change. Returns once the guest confirms the start.
guest_hold() {
	local dom=$1 secs=$2 tok before t0
	tok=hold$secs-$(date +%s)
	before=$({ grep -c 'XENLAB-GUEST hold-started' "$R/guest-$dom.log" 2>/dev/null || true; })
	log "asking $dom to hold and overwrite scratch/hold.bin for ${secs}s ($tok)"
	t0=$(date +%s)
	guest_send "$dom" "$tok $tok $tok" || return 1
	while [ "$({ grep -c 'XENLAB-GUEST hold-started' "$R/guest-$dom.log" 2>/dev/null || true; })" -le "${before:-0}" ]; do
		guest_check "$dom" || return 1
		if [ $(($(date +%s) - t0)) -ge 120 ]; then
			guest_tail "$dom" 10
			error "$dom did not start its hold workload within 120s"
			return 1
		fi
		[ $((($(date +%s) - t0) % 20)) -eq 19 ] && guest_send "$dom" "$tok $tok $tok" # runs once per token
		sleep 1
	done
}

# guest_hold_result DOM [TIMEOUT]: wait for the end of DOM's last hold workload; print its line's
# fields ("ok=1 errors=0 cycles=…"); fails unless ok=1 errors=0.
guest_hold_result() {
	local dom=$1 to=${2:-600} t0 line
	t0=$(date +%s)
	while :; do
		line=$({ grep -E 'XENLAB-GUEST hold(-failed)? ' "$R/guest-$dom.log" 2>/dev/null || true; } | tail -n1)
		[ -n "$line" ] && break
		if [ $(($(date +%s) - t0)) -ge "$to" ]; then
			guest_tail "$dom" 10 >&2
			error "timeout: $dom did not finish its hold workload within ${to}s" >&2
			return 1
		fi
		sleep 1
	done
	echo "${line#*XENLAB-GUEST hold }"
	case " $line " in
	*" ok=1 errors=0 "*) return 0 ;;
	*) return 1 ;;
	esac
}

# verify_guest_disk [IMG]: with the guest shut down, check every file on the guest disk's data
# partition against the manifests the guest keeps there (shipped files and written files).
verify_guest_disk() {
	local img=${1:-$GUEST_IMG} loop rc=0 mnt=/run/xenlab/guestdisk
	loop=$(timeout 30 losetup -P -r -f --show "$img") || { error "losetup $img failed"; return 1; }
	retry_until 10 test -b "${loop}p2" || {
		losetup -d "$loop"
		error "no partition 2 on $img"
		return 1
	}
	mkdir -p "$mnt"
	timeout 30 mount -t ext4 -o ro,noload "${loop}p2" "$mnt" || {
		losetup -d "$loop"
		error "cannot mount the guest data partition"
		return 1
	}
	(cd "$mnt" && timeout 300 sha256sum --quiet -c orig.sha256 w.sha256) >"$R/verify-guest-disk.txt" 2>&1 || rc=$?
	log "offline check of $img: $(cat "$mnt/orig.sha256" "$mnt/w.sha256" | wc -l) files, status $rc"
	umount "$mnt"
	losetup -d "$loop"
	if [ $rc -ne 0 ]; then
		sed 's/^/    | /' "$R/verify-guest-disk.txt" | head -n 20 || true
		error "guest disk content does not match its manifests"
		return 1
	fi
}

# verify_stream FILE: run Xen's verify-stream-v2 on an `xl save` file; output in
# $R/verify-stream-<name>.txt. Returns its status (2: tool missing).
verify_stream() {
	local f=$1 out rc=0
	out=$R/verify-stream-$(basename "$f").txt
	if ! [ -x /usr/lib/xen-4.17/bin/verify-stream-v2 ]; then
		echo "verify-stream-v2 not installed" >"$out"
		return 2
	fi
	timeout 600 python3 /usr/lib/xen-4.17/bin/verify-stream-v2 -v -f xl -i "$f" >"$out" 2>&1 || rc=$?
	log "verify-stream-v2 $f: status $rc ($(tail -n1 "$out"))"
	return $rc
}

# collect_logs: copy the toolstack's and Xen's logs into $R (safe to call more than once;
# stage2 calls it after every scenario).
collect_logs() {
	timeout 20 xl list >"$R/xl-list.txt" 2>&1 || true
	timeout 20 xl dmesg >"$R/xl-dmesg.txt" 2>&1 || true
	dmesg >"$R/dom0-dmesg.txt" 2>&1 || true
	ps -eo pid,ppid,stat,etime,args >"$R/ps.txt" 2>&1 || true
	timeout 20 xenstore-ls -f >"$R/xenstore.txt" 2>&1 || true
	mkdir -p "$R/var-log-xen"
	cp -a /var/log/xen/. "$R/var-log-xen/" 2>/dev/null || true
	cp -a /etc/xen/*.cfg "$R/var-log-xen/" 2>/dev/null || true
}
