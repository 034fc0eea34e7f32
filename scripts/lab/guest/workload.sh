#!/bin/sh
# Workload of the lab's HVM test guest (busybox sh, on the serial console ttyS0).
#
# The data partition (/dev/sda2, ext4) holds shipped files of random data (orig/*) and their
# manifest orig.sha256. The workload
#   1. verifies every shipped file (page cache dropped first, so the bytes come through the
#      emulated IDE disk)                 -> "XENLAB-GUEST verify-initial ok=1 files=N errors=0 ..."
#   2. then loops: reads+verifies one shipped file, writes a new file of random data, reads it
#      back and verifies it, keeps the last $NSLOTS written files and their manifest w.sha256
#                                         -> "XENLAB-GUEST round=N ok=1 errors=0 ..." per round
#      (errors counts every mismatch since boot: anything but errors=0 is a failure)
#   3. on "benchN" typed into the console (N: digits, a token run once): the O_DIRECT read
#      benchmark bin/diskbench on /dev/sda2 -> "XENLAB-GUEST bench seq_mbps=... rand_iops=..."
#   4. on "holdS-N" typed into the console: for S seconds, in the background, `diskbench hold`
#      overwrites scratch/hold.bin while it keeps a DMA-read copy in memory that must not change
#                                         -> "XENLAB-GUEST hold ok=1 errors=0 cycles=..."
#   5. on "stop" typed into the console: re-verifies every file (shipped and written), unmounts
#      and powers off                     -> "XENLAB-GUEST final ok=1 errors=0 files=N ..."
# Written files are named <boot id>-<round>.bin and the manifest is replaced atomically after
# their data is synced, so the disk stays consistent even if the domain is destroyed mid-round.
M=/mnt
NSLOTS=8   # written files kept
WMB=2      # MiB written per round
PERIOD=2   # seconds between rounds (waiting for a console command)

up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "XENLAB-GUEST $*"; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
dropc() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}
fatal() {
	say "fatal $* up=$(up)"
	sleep 2
	poweroff -f
}

mount -t ext4 /dev/sda2 $M || fatal "cannot mount /dev/sda2"
cd $M || fatal "cd $M"
[ -f orig.sha256 ] || fatal "no orig.sha256 on the data partition"
mkdir -p w
[ -f w.sha256 ] || : >w.sha256
sync
B=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
n=$(wc -l <orig.sha256)
errors=0

t=$(up)
dropc
ok=1
if ! sha256sum -c -s orig.sha256; then
	ok=0
	errors=$((errors + 1))
	sha256sum -c orig.sha256 2>&1 | grep -v ': OK$' | head -n 5 | sed 's/^/XENLAB-GUEST mismatch /'
fi
if [ -s w.sha256 ] && ! sha256sum -c -s w.sha256; then
	ok=0
	errors=$((errors + 1))
	sha256sum -c w.sha256 2>&1 | grep -v ': OK$' | head -n 5 | sed 's/^/XENLAB-GUEST mismatch /'
fi
mb=$(du -sm orig | cut -f1)
say "verify-initial ok=$ok files=$((n + $(wc -l <w.sha256))) mb=$mb errors=$errors secs=$(since "$t") up=$(up)"

final() {
	wait # a background `diskbench hold` finishes first (it holds scratch/hold.bin open)
	t=$(up)
	dropc
	ferr=0
	sha256sum -c -s orig.sha256 || ferr=$((ferr + 1))
	sha256sum -c -s w.sha256 || ferr=$((ferr + 1))
	[ $ferr -eq 0 ] || sha256sum -c orig.sha256 w.sha256 2>&1 | grep -v ': OK$' | head -n 5 | sed 's/^/XENLAB-GUEST mismatch /'
	nf=$(cat orig.sha256 w.sha256 | wc -l)
	errors=$((errors + ferr))
	fok=0
	[ $errors -eq 0 ] && fok=1
	cd /
	umount $M || say "umount-failed"
	sync
	say "final ok=$fok errors=$errors files=$nf rounds=$round secs=$(since "$t") up=$(up)"
	sleep 1
	poweroff -f
}

round=0
input=
lastbench=
lasthold=
while :; do
	round=$((round + 1))
	t=$(up)
	rerr=0
	werr=0
	# read + verify one shipped file (rotating), from the disk
	line=$(sed -n "$(((round - 1) % n + 1))p" orig.sha256)
	f=${line##* }
	dropc
	echo "$line" | sha256sum -c -s || rerr=1
	rmb=$(($(stat -c %s "$f") / 1048576))
	# write a new file, sync, drop the cache, read it back and verify it
	name=w/$B-$round.bin
	dd if=/dev/urandom of=/tmp/new bs=1M count=$WMB 2>/dev/null
	sum=$(sha256sum /tmp/new | cut -d' ' -f1)
	cp /tmp/new "$name"
	rm -f /tmp/new
	dropc
	[ "$(sha256sum "$name" | cut -d' ' -f1)" = "$sum" ] || werr=1
	# keep the newest NSLOTS written files: new manifest first (atomically), then delete
	awk -v k=$((NSLOTS - 1)) '{ a[NR] = $0 } END { for (i = NR - k + 1; i <= NR; i++) if (i >= 1) print a[i] }' w.sha256 >w.sha256.tmp
	echo "$sum  $name" >>w.sha256.tmp
	dropped=$(awk -v k=$((NSLOTS - 1)) '{ a[NR] = $0 } END { for (i = 1; i <= NR - k; i++) print a[i] }' w.sha256 | awk '{ print $2 }')
	sync
	mv w.sha256.tmp w.sha256
	sync
	[ -n "$dropped" ] && rm -f $dropped
	errors=$((errors + rerr + werr))
	ok=1
	[ $((rerr + werr)) -eq 0 ] || ok=0
	[ $rerr -eq 0 ] || say "mismatch read $f"
	[ $werr -eq 0 ] || say "mismatch write $name"
	say "round=$round ok=$ok errors=$errors read_mb=$rmb write_mb=$WMB secs=$(since "$t") up=$(up)"
	# Between rounds, listen for a command typed into the console. `read -t` may time out in
	# the middle of a line (it reads byte by byte) and lose its start, so input accumulates and
	# the host sends "stop stop stop".
	cmd=
	read -t $PERIOD cmd
	input="$input$cmd"
	case $input in
	*stop*) final ;;
	*hold[0-9]*-[0-9]*)
		# "holdS-N": for S seconds, in the background, overwrite scratch/hold.bin again and again
		# while keeping a DMA-read copy of it in memory that must never change (once per token)
		tok=$(echo "$input" | grep -o 'hold[0-9][0-9]*-[0-9][0-9]*' | tail -n1)
		input=
		if [ -n "$tok" ] && [ "$tok" != "$lasthold" ]; then
			lasthold=$tok
			s=${tok#hold}
			/mnt/bin/diskbench hold -file /mnt/scratch/hold.bin -secs "${s%-*}" &
			say "hold-started secs=${s%-*} up=$(up)"
		fi
		;;
	*bench[0-9]*)
		# "benchN": run the read benchmark once per token N (the host repeats the token)
		tok=$(echo "$input" | grep -o 'bench[0-9][0-9]*' | tail -n1)
		input=
		if [ "$tok" != "$lastbench" ]; then
			lastbench=$tok
			/mnt/bin/diskbench -dev /dev/sda2 -rand-n 500 || say "bench-failed status=$?"
		fi
		;;
	esac
	[ ${#input} -gt 10 ] && input=${input#"${input%??????????}"} # keep the last 10 characters
done
