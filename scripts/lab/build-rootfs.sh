#!/bin/bash
# Builds the dom0 root file system of the lab: Debian $XENLAB_SUITE minbase + the Xen 4.17 toolstack,
# the stock device model (qemu-system-xen), SeaBIOS, the Debian kernel and a few tools, as an ext4 image.
#
# usage: build-rootfs.sh OUTDIR     (normally called by `scripts/lab.sh build`, which caches OUTDIR)
# env:   V_* package versions (scripts/lab.sh passes them; see lab_versions_env), XENLAB_SUITE, XENLAB_MIRROR,
#        XENLAB_SECURITY_MIRROR, XENLAB_WORK (scratch dir)
# out:   rootfs.ext4 (generic: /sbin/xenlab-init mounts the xfer disk and runs /xfer/xenlab/stage2.sh),
#        vmlinuz, initrd.img (the dom0 kernel and its small initramfs), packages.txt, artifact.env
#
# The whole build runs in a private mount namespace: the chroot's proc/sys/dev mounts vanish
# with it, even when it is killed.
set -euo pipefail

OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${XENLAB_WORK:-$(dirname "$OUT")}
R=$WORK/tree

if [ "${XENLAB_IN_NS:-}" != 1 ]; then
	exec env XENLAB_IN_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi

: "${V_XEN_UTILS:?}" "${V_XEN_HYPERVISOR:?}" "${V_QEMU_SYSTEM_XEN:?}" "${V_SEABIOS:?}" "${V_LINUX_IMAGE:?}"
SUITE=${XENLAB_SUITE:-bookworm}
MIRROR=${XENLAB_MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${XENLAB_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

step() { echo "=== [$(date +%T)] $*"; }

# Packages of the dom0. Versions of the ones that matter are pinned to what keyed this build.
PKGS=(
	"xen-utils-4.17=$V_XEN_UTILS" "xen-hypervisor-4.17-amd64=$V_XEN_HYPERVISOR"
	"qemu-system-xen=$V_QEMU_SYSTEM_XEN" "seabios=$V_SEABIOS" "linux-image-amd64=$V_LINUX_IMAGE"
	xen-utils-common busybox iproute2 procps kmod e2fsprogs util-linux mount coreutils
	python3 socat jq xxd strace less psmisc file
)

step "debootstrap --variant=minbase $SUITE"
mkdir -p "$R"
timeout 1200 debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR"

step "configure the chroot"
rm -f "$R/etc/apt/sources.list"
cat >"$R/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECMIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat >"$R/etc/apt/apt.conf.d/90xenlab" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Check-Valid-Until "false";
Acquire::Retries "3";
EOF
# Small image, fast dpkg: no docs/man/locales, no fsync per file.
cat >"$R/etc/dpkg/dpkg.cfg.d/90xenlab" <<'EOF'
force-unsafe-io
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
# No daemons may start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
# A small dom0 initramfs: only what is needed to mount /dev/vda (virtio, ext4); the rest of the
# modules are loaded from the root file system by xenlab-init.
mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/etc/initramfs-tools/hooks"
cat >"$R/etc/initramfs-tools/conf.d/xenlab.conf" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
cat >"$R/etc/initramfs-tools/hooks/xenlab" <<'EOF'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk crc32c_generic ext4; do
	force_load "$m"
done
EOF
chmod 755 "$R/etc/initramfs-tools/hooks/xenlab"
echo xenlab-dom0 >"$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 xenlab-dom0\n' >"$R/etc/hosts"

mount -t proc proc "$R/proc"
mount -t sysfs sys "$R/sys"
# A private /dev (not a bind of the host's): maintainer scripts cannot touch host device nodes.
mount -t tmpfs -o mode=0755 xenlab-dev "$R/dev"
for n in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0" "ptmx c 5 2"; do
	set -- $n
	mknod -m 0666 "$R/dev/$1" "$2" "$3" "$4"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
mount -t devpts devpts "$R/dev/pts" -o newinstance,ptmxmode=0666 2>/dev/null || true

step "apt-get update (chroot)"
timeout 600 chroot "$R" apt-get update
step "apt-get install ${PKGS[*]}"
timeout 2400 chroot "$R" apt-get install -y -o Dpkg::Options::=--force-confold "${PKGS[@]}"

step "install xenlab-init"
install -m 0755 "$HERE/dom0/xenlab-init" "$R/sbin/xenlab-init"
mkdir -p "$R/xfer" "$R/var/lib/xen" "$R/var/log/xen" "$R/etc/xen"
rm -f "$R/usr/sbin/policy-rc.d"

step "record and clean"
chroot "$R" dpkg-query -W -f '${Package} ${Version}\n' >"$OUT/packages.txt"
chroot "$R" apt-get clean
rm -rf "$R/var/lib/apt/lists/"* "$R/var/cache/apt/"*.bin "$R/var/log/"*.log "$R/var/log/apt/"*
umount "$R/dev/pts" 2>/dev/null || true
umount "$R/dev" "$R/sys" "$R/proc"

kver=$(basename "$(ls -d "$R"/lib/modules/* | head -n1)")
cp "$R/boot/vmlinuz-$kver" "$OUT/vmlinuz"
cp "$R/boot/initrd.img-$kver" "$OUT/initrd.img"
[ -x "$R/usr/libexec/xen-qemu-system-i386" ] || { echo "no /usr/libexec/xen-qemu-system-i386 in the rootfs" >&2; exit 1; }
[ -x "$R/usr/lib/xen-4.17/bin/verify-stream-v2" ] || echo "note: verify-stream-v2 not shipped"

step "mkfs.ext4 -d"
# 4 GiB sparse: ~1 GiB used, the rest is scratch space for save images (the image is booted
# with snapshot=on, so that space never reaches the cache).
timeout 900 mkfs.ext4 -q -F -L xenlab-root -E lazy_itable_init=1 -d "$R" "$OUT/rootfs.ext4" 4G
rm -rf --one-file-system "$R"

{
	echo "KERNEL_VERSION=$kver"
	echo "XEN_UTILS_VERSION=$V_XEN_UTILS"
	echo "QEMU_SYSTEM_XEN_VERSION=$V_QEMU_SYSTEM_XEN"
	echo "ROOTFS_BYTES_USED=$(du -B1 "$OUT/rootfs.ext4" | cut -f1)"
} >"$OUT/artifact.env"
step "done: $(du -sh "$OUT/rootfs.ext4" | cut -f1) allocated"
