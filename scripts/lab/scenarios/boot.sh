# Boot the lab's test guest with xen-dm-go as its device model ($DM, default /xfer/bin/xen-dm-go):
#   xl create -> hvmloader -> SeaBIOS -> Linux from the emulated IDE disk -> the disk workload;
#   `xl console` shows the guest's serial output; the guest's final verification and ACPI
#   power-off (PM1a_CNT S5 -> remote_shutdown); a second guest ended by `xl destroy`; after
#   each, nothing of the device model is left behind (process, QMP sockets, tracker socket,
#   xenstore device-model directory).
#   The guest's O_DIRECT read benchmark (guest/diskbench: sequential 1 MiB and random 4 KiB
#   reads of /dev/sda2) runs BENCH_RUNS times under xen-dm-go (g1) and under the stock qemu-xen
#   (a third guest, g3, in the same lab boot); the medians are reported.
# Values: boot_s, console_ok, poweroff_ok, destroy_ok, leftovers, checksums_ok,
#   {ours,stock}_seq_mbps, {ours,stock}_rand_iops, stock_boot_s.
DM=${DM:-/xfer/bin/xen-dm-go}
GUEST_MEM=${GUEST_MEM:-256}
BENCH_RUNS=${BENCH_RUNS:-3}

start_daemons
mkdir -p "$(readlink -f /var/lock 2>/dev/null || echo /var/lock)" # xenconsole (xl console) takes a lock file there
"$DM" --version | head -n1 | sed 's/^/device model: /'

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) { print "" } else if (NR % 2) { print a[(NR + 1) / 2] } else { printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 } }'; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

# bench DOM TAG: BENCH_RUNS read benchmarks on DOM; results TAG_seq_mbps and TAG_rand_iops (medians).
bench() {
	local dom=$1 tag=$2 i out seq="" rnd=""
	for i in $(seq 1 "$BENCH_RUNS"); do
		out=$(guest_bench "$dom") || return 1
		echo "$tag bench $i: $out" >>"$R/bench.txt"
		seq="$seq $(echo "$out" | field seq_mbps)"
		rnd="$rnd $(echo "$out" | field rand_iops)"
	done
	result "${tag}_seq_mbps" "$(echo "$seq" | tr ' ' '\n' | grep . | median)"
	result "${tag}_rand_iops" "$(echo "$rnd" | tr ' ' '\n' | grep . | median)"
}

# leftovers ID: print what a device model of domain ID left behind (empty when clean).
leftovers() {
	local id=$1
	pgrep -a -f "xen-dm-go.*-xen-domid $id( |$)" || true
	ls /var/run/xen/qmp-libxl-"$id" /var/run/xen/qmp-libxenstat-"$id" /var/run/xen/xen-dm-go-tracker-"$id".sock 2>/dev/null || true
	timeout 20 xenstore-ls "/local/domain/0/device-model/$id" 2>/dev/null || true
}

# --- boot to the workload
mkcfg g1 "$DM" "$GUEST_MEM" >/dev/null
t0=$(now)
guest_create g1
wait_guest_round g1 1 "$GUEST_BOOT_TIMEOUT"
result boot_s "$(elapsed "$t0")"
id=$(domid g1)
cp "/var/log/xen/qemu-dm-g1.log" "$R/dm-g1-boot.log" 2>/dev/null || true
bench g1 ours || fail "the read benchmark failed under xen-dm-go"

# --- xl console: the operator's view of the serial port (the capture reader steps aside)
stop_capture g1
r=$(guest_round g1)
timeout 150 xl console g1 </dev/null >"$R/xl-console.txt" 2>&1 &
cpid=$!
retry_until 140 grep -q "XENLAB-GUEST round=$((r + 1))" "$R/xl-console.txt" && console_ok=1 || console_ok=0
kill "$cpid" 2>/dev/null || true
wait "$cpid" 2>/dev/null || true
result console_ok "$console_ok"
[ "$console_ok" = 1 ] || { tail -n 20 "$R/xl-console.txt" | sed 's/^/    | /'; error "xl console did not show the guest's serial output"; }
capture_serial g1
wait_guest_round g1 $((r + 2))

# --- the guest verifies every file, unmounts and powers off through ACPI (S5)
guest_stop g1
# guest_stop destroys a guest that does not power off by itself within 60 s: that is a failure here.
poweroff_ok=1
grep -q "g1 did not power off by itself" "$R/run.log" && poweroff_ok=0
result poweroff_ok "$poweroff_ok"
sleep 2
left=$(leftovers "$id")
verify_guest_disk "$GUEST_IMG"
result checksums_ok 1

# --- a second guest, ended by xl destroy while its workload runs
mkcfg g2 "$DM" "$GUEST_MEM" >/dev/null
guest_create g2
wait_guest_round g2 1 "$GUEST_BOOT_TIMEOUT"
id2=$(domid g2)
xlc destroy g2
sleep 2
left2=$(leftovers "$id2")
[ -z "$left2" ] && destroy_ok=1 || destroy_ok=0
result destroy_ok "$destroy_ok"
result leftovers "$(printf '%s\n%s' "$left" "$left2" | grep -c . || true)"
if [ -n "$left$left2" ]; then
	printf '%s\n%s\n' "$left" "$left2" | sed 's/^/    | /'
	error "the device model left something behind"
fi

# --- the same benchmark under the stock qemu-xen, same lab boot, same disk image
mkcfg g3 "$STOCK_DM" "$GUEST_MEM" >/dev/null
t0=$(now)
guest_create g3
wait_guest_round g3 1 "$GUEST_BOOT_TIMEOUT"
result stock_boot_s "$(elapsed "$t0")"
bench g3 stock || fail "the read benchmark failed under qemu-xen"
xlc destroy g3

[ "$poweroff_ok" = 1 ] || fail "guest did not power off through ACPI"
[ "$console_ok" = 1 ] || fail "xl console showed nothing"
[ -z "$left$left2" ] || fail "leftovers after power-off or destroy"
