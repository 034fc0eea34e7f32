# Compact live migration (issue 7): the test guest runs with xen-dm-go ($DM, default
# /xfer/bin/xen-dm-go) as its device model, on one shared disk (localhost migration).
#   1. boot; at round $CHECK_ROUND the guest is paused and `xen-dm-go tracker-check` measures the
#      disk-backed fraction f of its memory (non-zero pages equal to a 4 KiB block of its disk ÷
#      mapped pages) and the tracker's coverage and false entries;
#   2. (pages that are exact copies of tracked disk blocks travel as disk references, all-zero
#      pages as zero references) the guest's adversary starts (`diskbench hold`: it keeps re-reading scratch/hold.bin by DMA
#      and overwriting those very blocks, and checks that its DMA-read copy never changes), then
#      a live migration through the transport, as an operator runs it:
#        xl migrate -s "xen-dm-go migrate-send --domid D --require-tracker --local --" g localhost
#      (stock `xl migrate-receive` on the other side; the destination device model fills the
#      elided pages from the disk before the guest runs); the workload goes on with errors=0 and
#      the adversary's copy stays intact;
#   3. the same migration with the transport's elision off (--no-elide: the stream stock xl sends,
#      counted by the same code) for the byte ratio;
#   4. `xl save` into a FIFO read by `xen-dm-go stream compact` (the transport as a filter of a
#      save file), Xen's verify-stream-v2 on the compacted file, `xl restore` of it;
#   5. the guest's final verification, power-off, the offline disk check.
# Values: boot_s, the checker's summary (pages mapped zero_pages equal_pages tracked covered
#   false_entries coverage …), f, compact_{bytes,bytes_in,pages_elided{,_disk,_zero},elided_final,secs},
#   stock_bytes,
#   hold_ok, hold_cycles, save_{bytes_in,bytes_out,pages_elided}, verify_ok,
#   restore_filled, checksums_ok.
DM=${DM:-/xfer/bin/xen-dm-go}
GUEST_MEM=${GUEST_MEM:-256}
CHECK_ROUND=${CHECK_ROUND:-2}
HOLD_SECS=${HOLD_SECS:-90}
G=cp

start_daemons
"$DM" --version | head -n1 | sed 's/^/device model: /'

# last_xl_log: the log file of the last xlc command.
last_xl_log() { ls -1 "$R"/xl/*.log | sort | tail -n1; }
# json_field KEY: the numeric KEY of the transport's JSON stats line on stdin.
json_field() { grep -o "\"$1\":[0-9.]*" | tail -n1 | cut -d: -f2; }
# dm_logs: the logs of the guest's device models (libxl names them after the guest; the incoming
# device model of a migration has "--incoming" in its name).
dm_logs() { cat /var/log/xen/qemu-dm-$G*.log 2>/dev/null || true; }

mkcfg $G "$DM" "$GUEST_MEM" >/dev/null
t0=$(now)
guest_create $G
wait_guest_round $G 1 "$GUEST_BOOT_TIMEOUT"
result boot_s "$(elapsed "$t0")"
cat "$GUEST_IMG" >/dev/null # into dom0's page cache: the check below runs with the guest paused

# --- 1. f: the dom0 memory check
wait_guest_round $G "$CHECK_ROUND"
id=$(domid $G)
kib=$(xenstore-read "/local/domain/$id/memory/static-max")
xlc pause $G
sleep 2 # in-flight DMA in the device model completes
rc=0
timeout 600 "$DM" tracker-check --domid "$id" --pages $(((kib + 3) / 4)) --disk "0=$GUEST_IMG" \
	>"$R/tracker-check.txt" 2>"$R/tracker-check.err" || rc=$?
xlc unpause $G
sed 's/^/    | /' "$R/tracker-check.txt"
[ "$rc" -eq 0 ] || fail "xen-dm-go tracker-check failed with status $rc: $(tail -n1 "$R/tracker-check.err")"
line=$(grep '^tracker-check ' "$R/tracker-check.txt") || fail "no summary line from tracker-check"
for kv in ${line#tracker-check }; do
	result "${kv%%=*}" "${kv#*=}"
done
eq=$(echo "$line" | tr ' ' '\n' | sed -n 's/^equal_pages=//p')
mapped=$(echo "$line" | tr ' ' '\n' | sed -n 's/^mapped=//p')
result f "$(awk -v a="$eq" -v b="$mapped" 'BEGIN { printf "%.4f", (b > 0 ? a / b : 0) }')"

# --- 2. compact live migration through the transport, the adversary running
wait_guest_round $G $(($(guest_round $G) + 1))
guest_hold $G "$HOLD_SECS"
id=$(domid $G)
r=$(guest_round $G)
t0=$(now)
xlc migrate -s "$DM migrate-send --domid $id --require-tracker --local --" $G localhost ||
	fail "compact migration failed"
result compact_secs "$(elapsed "$t0")"
logf=$(last_xl_log)
grep -h '"cmd":"migrate-send"' "$logf" | tail -n1 | sed 's/^/    | /'
result compact_bytes "$(json_field bytes_out <"$logf")"
result compact_bytes_in "$(json_field bytes_in <"$logf")" # what stock xl sent in this very migration
result compact_pages_elided "$(json_field pages_elided <"$logf")"
result compact_pages_elided_disk "$(json_field pages_elided_disk <"$logf")"
result compact_pages_elided_zero "$(json_field pages_elided_zero <"$logf")"
result compact_elided_final "$(json_field elided_final <"$logf")"
capture_serial $G
wait_guest_round $G $((r + 1)) || fail "the guest did not go on after the compact migration"
filled=$(dm_logs | grep -o 'elided guest pages filled.*' | tail -n1)
log "destination: ${filled:-no fill logged}"
hold=$(guest_hold_result $G $((HOLD_SECS + 300))) && hold_ok=1 || hold_ok=0
log "adversary: $hold"
result hold_ok "$hold_ok"
result hold_cycles "$(echo "$hold" | tr ' ' '\n' | sed -n 's/^cycles=//p')"
[ "$hold_ok" = 1 ] || fail "the adversary's DMA-read copy changed across the compact migration: $hold"

# --- 3. the same, elision off: the bytes stock xl sends
wait_guest_round $G $(($(guest_round $G) + 1))
id=$(domid $G)
r=$(guest_round $G)
xlc migrate -s "$DM migrate-send --no-elide --local --" $G localhost || fail "pass-through migration failed"
logf=$(last_xl_log)
grep -h '"cmd":"migrate-send"' "$logf" | tail -n1 | sed 's/^/    | /'
result stock_bytes "$(json_field bytes_out <"$logf")"
capture_serial $G
wait_guest_round $G $((r + 1)) || fail "the guest did not go on after the pass-through migration"

# --- 4. xl save through the transport as a filter; verify-stream-v2; restore
wait_guest_round $G $(($(guest_round $G) + 2)) # the 64 MiB verify-initial pages are long gone: rounds re-read 16 MiB each
id=$(domid $G)
fifo=/var/lib/xen/$G.fifo
rm -f "$fifo" && mkfifo "$fifo"
"$DM" stream compact --domid "$id" --check "$fifo" "/var/lib/xen/$G.compact" 2>"$R/stream-compact.err" &
fpid=$!
xlc save $G "$fifo" || fail "xl save into the transport's FIFO failed"
frc=0
wait $fpid || frc=$?
rm -f "$fifo"
sed 's/^/    | /' "$R/stream-compact.err" | tail -n 5
[ "$frc" -eq 0 ] || fail "xen-dm-go stream compact failed with status $frc"
result save_bytes_in "$(json_field bytes_in <"$R/stream-compact.err")"
result save_bytes_out "$(json_field bytes_out <"$R/stream-compact.err")"
result save_pages_elided "$(json_field pages_elided <"$R/stream-compact.err")"
verify_ok=0
verify_stream "/var/lib/xen/$G.compact" && verify_ok=1
result verify_ok "$verify_ok"
[ "$verify_ok" = 1 ] || { tail -n 5 "$R/verify-stream-$G.compact.txt" | sed 's/^/    | /'; fail "verify-stream-v2 refused the compacted save"; }
xlc restore -p "/var/lib/xen/$G.compact" || fail "xl restore of the compacted save failed"
capture_serial $G
r=$(guest_round $G)
xlc unpause $G
filled=$(dm_logs | grep -o 'elided guest pages filled.*' | tail -n1)
log "restore: ${filled:-no fill logged}"
result restore_filled "$(echo "$filled" | grep -o 'pages=[0-9]*' | head -n1 | cut -d= -f2)"
rm -f "/var/lib/xen/$G.compact"
wait_guest_round $G $((r + 1)) || fail "the guest did not go on after restoring the compacted save"

# --- 5. final verification
guest_stop $G
verify_guest_disk "$GUEST_IMG"
result checksums_ok 1
