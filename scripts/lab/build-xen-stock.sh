#!/bin/bash
# The "stock" hypervisor of the lab: Debian's own xen-hypervisor-4.17-amd64 binary, gunzipped
# (QEMU's multiboot loader takes the ELF32 image directly).
#
# usage: build-xen-stock.sh OUTDIR      env: V_XEN_HYPERVISOR (the package version), XENLAB_WORK
# out:   xen (multiboot ELF), xen.config (Debian's .config of it), artifact.env
set -euo pipefail
OUT=$1
WORK=${XENLAB_WORK:-$(dirname "$OUT")}
: "${V_XEN_HYPERVISOR:?}"
D=$WORK/deb
mkdir -p "$D"
cd "$D"
timeout 300 apt-get download -o Acquire::Retries=3 "xen-hypervisor-4.17-amd64=$V_XEN_HYPERVISOR"
dpkg-deb -x xen-hypervisor-4.17-amd64_*.deb x
gz=$(ls x/boot/xen-4.17-amd64.gz)
zcat "$gz" >"$OUT/xen"
cp x/boot/xen-4.17-amd64.config "$OUT/xen.config"
# Sanity: an ELF file with a multiboot header in its first 8 KiB.
[ "$(head -c4 "$OUT/xen" | od -An -c | tr -d ' ')" = '177ELF' ] || { echo "not an ELF image" >&2; exit 1; }
head -c 8192 "$OUT/xen" | od -An -tx4 -w4 -v | grep -q '1badb002' || { echo "no multiboot header" >&2; exit 1; }
{
	echo "XEN_VERSION=$V_XEN_HYPERVISOR"
	echo "XEN_SOURCE=debian-binary"
	grep -E '^(# )?CONFIG_(HVM|SHADOW_PAGING|MEM_PAGING|MEM_ACCESS)[= ]' "$OUT/xen.config" | sed 's/^# \(CONFIG_[A-Z_]*\) is not set/\1=n/; s/^/XEN_/'
} >"$OUT/artifact.env"
cat "$OUT/artifact.env"
