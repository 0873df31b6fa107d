#!/usr/bin/env bash
# Idempotent installer for the VM layer of kmm-conformance (run_suite.py --kernel IMAGE).
#
#   scripts/setup-vm.sh [VENV]        (default VENV: .venv, relative to the repo root)
#
# Installs (only what is missing):
#   - qemu-system-x86 (QEMU; TCG is used when nested KVM is unusable)
#   - busybox-static (virtme-ng's initramfs helper wants a static busybox)
#   - Debian kernels linux-image-amd64 (6.1) and linux-image-6.12-amd64 (6.12)
#   - virtme-ng (PyPI) into VENV
# then prints the vmlinuz images found and checks that each has the modules virtme-ng
# needs (9p, virtio, overlayfs) in /lib/modules/<version>.
#
# Environment: KMM_KERNEL_PKGS overrides the kernel package list (space separated).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-.venv}"
case "$venv" in /*) ;; *) venv="$repo_root/$venv" ;; esac
kernel_pkgs="${KMM_KERNEL_PKGS:-linux-image-amd64 linux-image-6.12-amd64}"
apt_pkgs="qemu-system-x86 busybox-static"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-vm.sh: must run as root (apt-get install)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

missing=()
for p in $apt_pkgs $kernel_pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    # apt-get update only once: skip it when the package lists are already present.
    if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
        echo "== apt-get update"
        apt-get update -q
    fi
    echo "== apt-get install ${missing[*]}"
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        echo "== install failed; refreshing package lists once and retrying"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
else
    echo "== apt packages already installed: $apt_pkgs $kernel_pkgs"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-vm.sh: no venv at $venv (create it first: python3 -m venv $venv)" >&2
    exit 1
fi
if [ -x "$venv/bin/vng" ]; then
    echo "== virtme-ng already in $venv: $("$venv/bin/vng" --version 2>/dev/null || echo '?')"
else
    echo "== pip install virtme-ng into $venv"
    "$venv/bin/python" -m pip install -q virtme-ng
fi

echo
echo "== kernel images"
status=0
found=0
for img in /boot/vmlinuz-*; do
    [ -e "$img" ] || continue
    found=1
    ver="${img#/boot/vmlinuz-}"
    moddir="/lib/modules/$ver"
    echo "$img  (modules: $moddir)"
    if [ ! -d "$moddir" ]; then
        echo "   MISSING $moddir: virtme-ng cannot load 9p/virtio modules for this kernel" >&2
        status=1
        continue
    fi
    for m in 9p 9pnet_virtio virtio_console overlay; do
        # Built-in modules are listed in modules.builtin, loadable ones in modules.dep.
        if grep -qE "(^|/)${m}\.ko(\.[a-z]+)?(:|$)" "$moddir/modules.dep" "$moddir/modules.builtin" 2>/dev/null; then
            echo "   ok   $m"
        else
            echo "   MISSING module $m" >&2
            status=1
        fi
    done
done
if [ "$found" -eq 0 ]; then
    echo "no /boot/vmlinuz-* found" >&2
    status=1
fi

echo
echo "== tools"
echo "vng:  $venv/bin/vng"
echo "qemu: $(command -v qemu-system-x86_64 || echo MISSING)"
if [ -e /dev/kvm ]; then
    echo "note: /dev/kvm exists; nested KVM may still hang (lib/runner/vm.py probes it and falls back to --disable-kvm)"
fi
echo "boot check: $venv/bin/vng --run /boot/vmlinuz-<ver> --disable-kvm --force-9p -- uname -r"
exit "$status"
