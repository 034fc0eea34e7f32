#!/bin/bash
# Builds the lab's HVM test guest disk: boots from IDE through SeaBIOS (syslinux MBR + a FAT boot
# partition) into the Debian kernel with a busybox initramfs, which runs guest/workload.sh on the
# serial console against an ext4 data partition of random files.
#
# usage: build-guest.sh OUTDIR
# env:   V_LINUX_IMAGE (linux-image-amd64 version), V_BUSYBOX_STATIC, V_SYSLINUX, XENLAB_WORK
# out:   guest.img (raw MBR disk), guest.env (layout, for dom0's lib.sh), vmlinuz, initrd.img,
#        syslinux.cfg, artifact.env
#
# Disk layout (no loop mounts: every file system is made as a file and copied in at its offset):
#   sector 0          syslinux mbr.bin + MBR partition table (sfdisk)
#   p1 @ 1 MiB        FAT16, 32 MiB, active: ldlinux.sys (syslinux --install), vmlinuz, initrd.img
#   p2 @ 33 MiB       ext4 (4 KiB blocks): orig/f1..f4.bin (4 x 16 MiB random) + orig.sha256,
#                     bin/diskbench (guest/diskbench, static Go: the read benchmark and the
#                     compact migration's adversary), scratch/hold.bin (8 MiB, overwritten by it)
set -euo pipefail
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${XENLAB_WORK:-$(dirname "$OUT")}
: "${V_LINUX_IMAGE:?}" "${V_BUSYBOX_STATIC:?}" "${V_SYSLINUX:?}"
export LC_ALL=C MTOOLS_SKIP_CHECK=1

MODULES="ata_piix sd_mod crc32c_generic ext4" # + their dependencies from modules.dep
NFILES=4
FILE_MB=16
P1_START=2048 P1_SECTORS=65536    # 1 MiB, 32 MiB
P2_START=67584 P2_SECTORS=393216  # 33 MiB, 192 MiB
# earlyprintk: a guest that dies before the console driver starts still leaves its last words on ttyS0
CMDLINE="console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 xen_emul_unplug=never quiet mitigations=off 8250.nr_uarts=1 panic=5"

D=$WORK/g
mkdir -p "$D"
cd "$D"

echo "=== download: kernel, busybox-static, syslinux"
kdep=$(apt-cache show "linux-image-amd64=$V_LINUX_IMAGE" | awk -F': ' '/^Depends:/ {print $2; exit}')
kpkg=$(echo "$kdep" | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*' | head -n1)
[ -n "$kpkg" ] || { echo "cannot resolve the kernel package of linux-image-amd64=$V_LINUX_IMAGE ($kdep)" >&2; exit 1; }
timeout 600 apt-get download -o Acquire::Retries=3 "$kpkg=$V_LINUX_IMAGE" "busybox-static=$V_BUSYBOX_STATIC" \
	"syslinux=$V_SYSLINUX" syslinux-common
for p in "$kpkg" busybox-static syslinux syslinux-common; do
	dpkg-deb -x "$(ls "${p}"_*.deb)" x
done
kver=$(ls x/lib/modules)
cp "x/boot/vmlinuz-$kver" "$OUT/vmlinuz"

echo "=== initramfs for $kver: $MODULES (+deps)"
depmod -b "$D/x" "$kver"
MD=x/lib/modules/$kver
I=$D/initramfs
mkdir -p "$I/bin" "$I/lib/modules/$kver"
cp x/bin/busybox "$I/bin/busybox"
install -m 0755 "$HERE/guest/init" "$I/init"
install -m 0755 "$HERE/guest/workload.sh" "$I/workload.sh"
modpath() { grep -oE "^[^:]*/$1\.ko(\.xz|\.zst)?:" "$MD/modules.dep" | head -n1 | tr -d ':'; }
: >"$I/modules.list"
declare -A seen=()
add_mod() { # relative path in modules.dep
	local p=$1 b
	[ -n "${seen[$p]:-}" ] && return 0
	seen[$p]=1
	b=$(basename "$p")
	case $b in
	*.ko.xz) xz -dc "$MD/$p" >"$I/lib/modules/$kver/${b%.xz}"; b=${b%.xz} ;;
	*.ko.zst) zstd -qdc "$MD/$p" >"$I/lib/modules/$kver/${b%.zst}"; b=${b%.zst} ;;
	*) cp "$MD/$p" "$I/lib/modules/$kver/$b" ;;
	esac
	echo "$b" >>"$I/modules.list"
}
for m in $MODULES; do
	p=$(modpath "$m")
	[ -n "$p" ] || { echo "module $m not found in $MD/modules.dep" >&2; exit 1; }
	# modules.dep lists the full dependency closure; the last entry has to be loaded first.
	deps=$(grep -E "^$p:" "$MD/modules.dep" | cut -d: -f2)
	for d in $(echo "$deps" | tr ' ' '\n' | sed '/^$/d' | tac); do add_mod "$d"; done
	add_mod "$p"
done
echo "module load order: $(tr '\n' ' ' <"$I/modules.list")"
# xz (the kernel has RD_XZ): every byte is loaded through SeaBIOS's PIO path, the slowest part of the boot.
(cd "$I" && find . | sort | cpio -o -H newc -R 0:0 --quiet) | xz -9e --check=crc32 >"$OUT/initrd.img"

echo "=== boot partition (FAT16 + syslinux)"
cat >"$OUT/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND $CMDLINE
EOF
truncate -s $((P1_SECTORS * 512)) p1.img
mkfs.vfat -F 16 -n XENLABBOOT -h $P1_START p1.img >/dev/null
timeout 120 x/usr/bin/syslinux --install p1.img
mcopy -i p1.img "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/syslinux.cfg" ::/
mdir -i p1.img ::/

echo "=== data partition (ext4): $NFILES x $FILE_MB MiB of random data + manifest"
mkdir -p data/orig
for i in $(seq 1 $NFILES); do
	head -c $((FILE_MB * 1048576)) /dev/urandom >"data/orig/f$i.bin"
done
(cd data && sha256sum orig/*.bin >orig.sha256)
mkdir -p data/bin data/scratch
head -c $((8 * 1048576)) /dev/urandom >data/scratch/hold.bin
# diskbench uses the standard library only: built as a module of its own from the copy of the
# sources the builder runs from (outside the repository's module)
mkdir -p "$D/diskbench"
cp "$HERE"/guest/diskbench/*.go "$D/diskbench/"
printf 'module xenlab/diskbench\n\ngo 1.22\n' >"$D/diskbench/go.mod"
(cd "$D/diskbench" && PATH=$PATH:/usr/local/go/bin CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOFLAGS= GOTOOLCHAIN=local \
	go build -trimpath -ldflags='-s -w' -o "$D/data/bin/diskbench" .)
truncate -s $((P2_SECTORS * 512)) p2.img
mkfs.ext4 -q -F -b 4096 -L xenlab-data -E root_owner=0:0 -d data p2.img

echo "=== disk"
truncate -s $(((P2_START + P2_SECTORS + 2048) * 512)) guest.img
sfdisk -q guest.img <<EOF
label: dos
unit: sectors
start=$P1_START, size=$P1_SECTORS, type=e, bootable
start=$P2_START, size=$P2_SECTORS, type=83
EOF
dd if=x/usr/lib/syslinux/mbr/mbr.bin of=guest.img bs=440 count=1 conv=notrunc status=none
dd if=p1.img of=guest.img bs=512 seek=$P1_START conv=notrunc,sparse status=none
dd if=p2.img of=guest.img bs=512 seek=$P2_START conv=notrunc,sparse status=none
sfdisk -l guest.img
mv guest.img "$OUT/guest.img"
cp data/orig.sha256 "$OUT/orig.sha256"
cat >"$OUT/guest.env" <<EOF
GUEST_KERNEL=$kver
GUEST_P2_START=$P2_START
GUEST_P2_SECTORS=$P2_SECTORS
GUEST_DATA_MB=$((NFILES * FILE_MB))
GUEST_CMDLINE="$CMDLINE"
EOF
{
	cat "$OUT/guest.env"
	echo "GUEST_INITRD_BYTES=$(stat -c %s "$OUT/initrd.img")"
	echo "GUEST_MODULES=\"$(tr '\n' ' ' <"$I/modules.list")\""
} >"$OUT/artifact.env"
cd /
rm -rf --one-file-system "$D"
