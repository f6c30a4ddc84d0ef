#!/usr/bin/env bash
# Start virtlogd and libvirtd without systemd (ENVIRONMENT.md), idempotently, and make
# /dev/kvm usable by QEMU when the machine has it (otherwise VMs run under TCG).
set -euo pipefail
log() { printf '[libvirt-start] %s\n' "$*" >&2; }

if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm 2>/dev/null || true
  chmod 0660 /dev/kvm 2>/dev/null || true
fi

# A killed daemon can linger as a zombie, which `kill -0` still reports alive.
alive() {
  [ -f "$1" ] || return 1
  local pid state
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
  [ "$state" != Z ]
}

mkdir -p /run/libvirt
if ! alive /run/virtlogd.pid; then
  log "starting virtlogd"
  virtlogd -d
fi
if ! alive /run/libvirtd.pid; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 1 100); do
  virsh -q -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.1
done
log "libvirtd did not answer on qemu:///system"
exit 1
