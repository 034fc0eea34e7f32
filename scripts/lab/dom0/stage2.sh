#!/bin/bash
# Stage 2 of the dom0's init, run by /sbin/xenlab-init from the xfer disk (/xfer/xenlab/stage2.sh),
# so that changing it never rebuilds the cached rootfs image.
#
# Runs /xfer/run.sh under a watchdog (/xfer/timeout seconds), its output going to
# /xfer/results/run.log and, live, to the Xen console (the host's serial log); then records
# /xfer/results/status.env (rc, timed_out, seconds) and collects the logs.
# Interactive mode (/xfer/interactive exists): start the daemons and give a root shell on hvc0.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
XFER=/xfer
R=$XFER/results
mkdir -p "$R" /run/xenlab
hostname xenlab-dom0 2>/dev/null
T=$(cat $XFER/timeout 2>/dev/null || echo 1800)
case $T in '' | *[!0-9]*) T=1800 ;; esac

log() { echo "[xenlab +$(cut -d' ' -f1 /proc/uptime)s] stage2: $*"; }

{
	echo "dom0_uptime_at_start=$(cut -d' ' -f1 /proc/uptime)"
	echo "timeout=$T"
} >"$R/status.env"

if [ -f $XFER/interactive ]; then
	# shellcheck disable=SC1091
	. $XFER/lib.sh
	start_daemons || log "start_daemons failed"
	log "interactive shell on hvc0 (exit or poweroff to stop the lab; results in /xfer/results)"
	cd /root 2>/dev/null || cd /
	setsid -c bash -i </dev/hvc0 >/dev/hvc0 2>&1
	printf 'rc=0\ntimed_out=0\ninteractive=1\n' >>"$R/status.env"
	collect_logs
	sync
	exit 0
fi

if [ ! -f $XFER/run.sh ]; then
	log "no /xfer/run.sh"
	echo "rc=127" >>"$R/status.env"
	exit 1
fi

log "running /xfer/run.sh with a ${T}s watchdog"
t0=$(date +%s)
timeout --kill-after=20 "$T" bash $XFER/run.sh </dev/null >>"$R/run.log" 2>&1 &
pid=$!
tail -n +1 -s 0.5 -f --pid=$pid "$R/run.log" >/dev/hvc0 2>&1 &
tailpid=$!
wait $pid
rc=$?
secs=$(($(date +%s) - t0))
sleep 1
kill $tailpid 2>/dev/null
timed_out=0
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
	timed_out=1
	log "WATCHDOG: the scenario did not finish within ${T}s; it was killed" | tee -a "$R/run.log"
fi
{
	echo "rc=$rc"
	echo "timed_out=$timed_out"
	echo "scenario_seconds=$secs"
} >>"$R/status.env"
log "scenario finished: rc=$rc timed_out=$timed_out after ${secs}s; collecting logs"

(
	# shellcheck disable=SC1091
	. $XFER/lib.sh
	collect_logs
) >/dev/null 2>&1 &
cpid=$!
for _ in $(seq 1 120); do
	kill -0 $cpid 2>/dev/null || break
	sleep 0.5
done
kill -9 $cpid 2>/dev/null
echo "collected=1" >>"$R/status.env"
sync
log "done"
exit $rc
