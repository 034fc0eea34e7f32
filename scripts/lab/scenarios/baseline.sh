# Baseline of the lab with the stock device model (qemu-xen, /usr/libexec/xen-qemu-system-i386):
#   boot the test guest and run its disk workload; xl save + xl restore; xl migrate to localhost;
#   after each, the workload rounds go on with errors=0; then the guest's final verification and an
#   offline check of its disk. Finally a small guest's `xl save` stream is captured (+ verify-stream-v2).
# Values (results/values.env): boot_s save_s restore_s migrate_s (+ *_resume_s: until the next
# good round), save_bytes, checksums_ok, verify_ok, capture_*.
# Environment: DM (device model, default stock), GUEST_MEM (MiB, default 256), CAPTURE_MEM (default 192; 128 MiB is too little for the Debian kernel),
# CAPTURE=0 to skip the capture.
DM=${DM:-$STOCK_DM}
GUEST_MEM=${GUEST_MEM:-256}
CAPTURE_MEM=${CAPTURE_MEM:-192}

start_daemons
"$DM" --version 2>/dev/null | head -n1 | sed 's/^/device model: /' || true

# --- boot: xl create -> first good workload round
mkcfg g1 "$DM" "$GUEST_MEM" >/dev/null
t0=$(now)
guest_create g1
wait_guest_round g1 1 "$GUEST_BOOT_TIMEOUT"
result boot_s "$(elapsed "$t0")"
{ grep -o "XENLAB-GUEST verify-initial.*" "$R/guest-g1.log" || true; } | head -n1 | sed "s/^/  /"
wait_guest_round g1 2

# --- save + restore
r=$(guest_round g1)
save_s=$(timed xlc save g1 /var/lib/xen/g1.save)
result save_s "$save_s"
result save_bytes "$(stat -c %s /var/lib/xen/g1.save)"
t0=$(now)
restore_s=$(timed xlc restore -p /var/lib/xen/g1.save)
capture_serial g1
xlc unpause g1
result restore_s "$restore_s"
wait_guest_round g1 $((r + 2))
result restore_resume_s "$(elapsed "$t0")"
rm -f /var/lib/xen/g1.save

# --- live migration to localhost (no ssh: -s "" makes xl run the receiver command itself)
r=$(guest_round g1)
t0=$(now)
migrate_s=$(timed xlc migrate -s "" g1 "xl -vvv migrate-receive")
capture_serial g1
result migrate_s "$migrate_s"
wait_guest_round g1 $((r + 2))
result migrate_resume_s "$(elapsed "$t0")"
result rounds "$(guest_round g1)"

# --- the guest verifies everything once more, powers off; then dom0 checks the disk offline
guest_stop g1
verify_guest_disk "$GUEST_IMG"
result checksums_ok 1

# --- capture the `xl save` stream of a small guest (test data for the stream codec)
if [ "${CAPTURE:-1}" = 1 ]; then
	mkcfg cap "$DM" "$CAPTURE_MEM" >/dev/null
	guest_create cap
	wait_guest_round cap 1 "$GUEST_BOOT_TIMEOUT"
	capture_s=$(timed xlc save cap /var/lib/xen/cap.save)
	name=xl-save-hvm-${CAPTURE_MEM}m-xen$(awk -F': ' '/^xen_version/ {print $2}' "$R/xl-info.txt").xl
	mkdir -p "$R/captured"
	cp /var/lib/xen/cap.save "$R/captured/$name"
	verify_ok=0
	verify_stream "$R/captured/$name" && verify_ok=1
	cp "$R/verify-stream-$name.txt" "$R/captured/$name.verify.txt" 2>/dev/null || true
	{
		echo "file=$name"
		echo "bytes=$(stat -c %s "$R/captured/$name")"
		echo "sha256=$(sha256sum "$R/captured/$name" | cut -d' ' -f1)"
		echo "guest_memory_mb=$CAPTURE_MEM"
		echo "guest_round_at_save=$(guest_round cap)"
		echo "device_model=$DM"
		echo "xl_cmd=xl save cap <file>"
		echo "verify_stream_v2_ok=$verify_ok"
		grep -E '^(xen_version|xen_caps|virt_caps|host)' "$R/xl-info.txt"
		echo "dom0_xen_utils=$(dpkg-query -W -f '${Version}' xen-utils-4.17)"
		echo "captured_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	} >"$R/captured/$name.meta"
	result capture_s "$capture_s"
	result capture_file "$name"
	result capture_bytes "$(stat -c %s "$R/captured/$name")"
	result verify_ok "$verify_ok"
	rm -f /var/lib/xen/cap.save
fi
