#!/bin/bash
# The "paging" hypervisor of the lab: Xen rebuilt from Debian's source package (the version in
# $XENLAB_SUITE main: apt-get source does not serve the security suite's), with Debian's kconfig
# (debian/xen-kconfig) plus EXPERT, UNSUPPORTED, SHADOW_PAGING and MEM_PAGING. Only the hypervisor
# is built (make -C xen), not the tools.
#
# usage: build-xen-paging.sh OUTDIR     env: V_XEN_SOURCE, XENLAB_WORK, XENLAB_JOBS
# out:   xen (multiboot ELF), xen.config, artifact.env
set -euo pipefail
OUT=$1
WORK=${XENLAB_WORK:-$(dirname "$OUT")}
: "${V_XEN_SOURCE:?}"
JOBS=${XENLAB_JOBS:-$(nproc)}
unset CFLAGS CXXFLAGS CPPFLAGS LDFLAGS MAKEFLAGS
export LC_ALL=C

S=$WORK/src
mkdir -p "$S"
cd "$S"
echo "=== apt-get source xen=$V_XEN_SOURCE"
timeout 300 apt-get source --download-only -o Acquire::Retries=3 "xen=$V_XEN_SOURCE"
timeout 300 dpkg-source -x ./xen_*.dsc tree >/dev/null
cd tree

echo "=== configure: debian/xen-kconfig + EXPERT UNSUPPORTED SHADOW_PAGING MEM_PAGING"
cp debian/xen-kconfig xen/.config
cat >>xen/.config <<'EOC'
CONFIG_EXPERT=y
CONFIG_UNSUPPORTED=y
CONFIG_HVM=y
CONFIG_SHADOW_PAGING=y
CONFIG_MEM_PAGING=y
EOC
PY=$(command -v /usr/bin/python3 || command -v python3)
timeout 300 make -C xen XEN_TARGET_ARCH=x86_64 PYTHON="$PY" olddefconfig
for opt in CONFIG_EXPERT CONFIG_UNSUPPORTED CONFIG_HVM CONFIG_SHADOW_PAGING CONFIG_MEM_PAGING; do
	grep -qx "$opt=y" xen/.config || { echo "FATAL: $opt=y did not survive olddefconfig" >&2; exit 1; }
done
grep -qx 'CONFIG_DEBUG=y' xen/.config && { echo "FATAL: debug hypervisor configured" >&2; exit 1; }

echo "=== make -C xen -j$JOBS"
t0=$(date +%s)
timeout 3000 make -C xen -j"$JOBS" XEN_TARGET_ARCH=x86_64 PYTHON="$PY"
echo "=== hypervisor built in $(($(date +%s) - t0))s"
cp xen/xen "$OUT/xen"
cp xen/.config "$OUT/xen.config"
[ "$(head -c4 "$OUT/xen" | od -An -c | tr -d ' ')" = '177ELF' ] || { echo "not an ELF image" >&2; exit 1; }
head -c 8192 "$OUT/xen" | od -An -tx4 -w4 -v | grep -q '1badb002' || { echo "no multiboot header" >&2; exit 1; }
{
	echo "XEN_VERSION=$V_XEN_SOURCE"
	echo "XEN_SOURCE=debian-source-rebuild"
	grep -E '^(# )?CONFIG_(HVM|SHADOW_PAGING|MEM_PAGING|MEM_ACCESS|UNSUPPORTED|EXPERT)[= ]' "$OUT/xen.config" | sed 's/^# \(CONFIG_[A-Z_]*\) is not set/\1=n/; s/^/XEN_/'
} >"$OUT/artifact.env"
cat "$OUT/artifact.env"
cd /
rm -rf --one-file-system "$S"
