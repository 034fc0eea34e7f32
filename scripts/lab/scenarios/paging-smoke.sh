# Smoke test of the "paging" hypervisor (Xen rebuilt from Debian's source with SHADOW_PAGING and
# MEM_PAGING): it boots, reports shadow paging, and runs the test guest shadow-paged (hap=0)
# through its workload and an xl save/restore.
# Values: virt_caps, shadow_ok, boot_s, save_s, restore_s.
start_daemons
case ",$(awk -F': ' '/^virt_caps/ {print $2}' "$R/xl-info.txt" | tr ' ' ','), " in
*,shadow,*) result shadow_ok 1 ;;
*) fail "virt_caps lacks shadow: the paging hypervisor was not booted (or built without SHADOW_PAGING)" ;;
esac
grep -E '^xen_(version|extra|changeset|commandline)' "$R/xl-info.txt" | sed 's/^/  /'

MKCFG_EXTRA='hap=0' mkcfg g1 "${DM:-$STOCK_DM}" "${GUEST_MEM:-256}" >/dev/null
t0=$(now)
guest_create g1
wait_guest_round g1 1 "$GUEST_BOOT_TIMEOUT"
result boot_s "$(elapsed "$t0")"
r=$(guest_round g1)
# (assignments, not arguments: a failing command substitution must end the scenario)
s=$(timed xlc save g1 /var/lib/xen/g1.save)
result save_s "$s"
s=$(timed xlc restore -p /var/lib/xen/g1.save)
result restore_s "$s"
capture_serial g1
xlc unpause g1
wait_guest_round g1 $((r + 2))
guest_stop g1
