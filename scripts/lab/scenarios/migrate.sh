# Save, restore and live-migrate the test guest with stock xl, for xen-dm-go and (for the
# ratios) for the stock qemu-xen, in the same lab boot. For each device model:
#   boot -> workload round; xl save + xl restore (timed); a refused migration (the receiver
#   command fails) must leave the guest running on the source; then MIGRATIONS live migrations
#   to localhost in a row, the workload going on with errors=0 after each; then the guest's final
#   verification and an offline check of its disk.
# Env: DM_OURS (default /xfer/bin/xen-dm-go), MIGRATIONS (default 20), STOCK_MIGRATIONS (3),
#      SKIP_STOCK=1 to skip the qemu-xen pass.
# Values, per device model D in {ours, stock}: D_boot_s D_save_s D_restore_s D_migrate_s
#   (median, without the --debug one) D_ok_count D_refused_ok D_checksums_ok D_verify_ok (verify-stream-v2
#   on the saved stream) D_debug_ok (the first migration, run with xl migrate --debug).
DM_OURS=${DM_OURS:-/xfer/bin/xen-dm-go}
MIGRATIONS=${MIGRATIONS:-20}
STOCK_MIGRATIONS=${STOCK_MIGRATIONS:-3}
GUEST_MEM=${GUEST_MEM:-256}

start_daemons

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) { print "" } else if (NR % 2) { print a[(NR + 1) / 2] } else { printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 } }'; }

# pass TAG DM N: one device model's run on guest "mg-TAG" (its own copy of the guest disk).
pass() {
	local tag=$1 dm=$2 n=$3 name=mg-$1 disk=/xfer/guest-$1.img r t0 i ok=0 times=""
	cp --sparse=always "$GUEST_IMG" "$disk"
	log "=== $tag: $dm, $n migrations"
	mkcfg "$name" "$dm" "$GUEST_MEM" "$disk" >/dev/null
	t0=$(now)
	guest_create "$name"
	wait_guest_round "$name" 1 "$GUEST_BOOT_TIMEOUT"
	result "${tag}_boot_s" "$(elapsed "$t0")"

	# save + restore
	r=$(guest_round "$name")
	local save_s restore_s
	save_s=$(timed xlc save "$name" "/var/lib/xen/$name.save")
	result "${tag}_save_s" "$save_s"
	# Xen's own checker on the saved stream (device-state record included)
	local verify_ok=0
	verify_stream "/var/lib/xen/$name.save" && verify_ok=1
	result "${tag}_verify_ok" "$verify_ok"
	restore_s=$(timed xlc restore -p "/var/lib/xen/$name.save")
	result "${tag}_restore_s" "$restore_s"
	capture_serial "$name"
	xlc unpause "$name"
	rm -f "/var/lib/xen/$name.save"
	wait_guest_round "$name" $((r + 1))

	# a migration the destination refuses: the guest must go on running here
	r=$(guest_round "$name")
	if timeout 300 xl migrate -s "" "$name" "false" >"$R/xl/refused-$tag.log" 2>&1; then
		error "$tag: a migration to a failing receiver reported success"
		result "${tag}_refused_ok" 0
	else
		wait_guest_round "$name" $((r + 1)) && result "${tag}_refused_ok" 1 || result "${tag}_refused_ok" 0
	fi

	# live migrations in a row, the workload running; the first with --debug (libxc sends every
	# page again at the end and the receiver compares them), left out of the timing
	for i in $(seq 1 "$n"); do
		r=$(guest_round "$name")
		t0=$(now)
		local dbg=""
		[ "$i" = 1 ] && dbg=--debug
		if xlc migrate $dbg -s "" "$name" "xl -vvv migrate-receive"; then
			[ -n "$dbg" ] && result "${tag}_debug_ok" 1 || times="$times $(elapsed "$t0")"
			capture_serial "$name"
			if wait_guest_round "$name" $((r + 1)); then
				ok=$((ok + 1))
				log "$tag: migration $i/$n ok"
				continue
			fi
		fi
		[ -n "$dbg" ] && result "${tag}_debug_ok" 0
		error "$tag: migration $i/$n failed"
		break
	done
	result "${tag}_ok_count" "$ok"
	result "${tag}_migrate_s" "$(echo "$times" | tr ' ' '\n' | grep . | median)"
	[ "$ok" -eq "$n" ] || fail "$tag: only $ok of $n migrations passed"
	guest_stop "$name"
	verify_guest_disk "$disk"
	result "${tag}_checksums_ok" 1
	rm -f "$disk"
}

pass ours "$DM_OURS" "$MIGRATIONS"
if [ "${SKIP_STOCK:-0}" != 1 ]; then
	pass stock "$STOCK_DM" "$STOCK_MIGRATIONS"
fi
