#!/usr/bin/env bash
# Start virtlogd and libvirtd without systemd (ENVIRONMENT.md), idempotently, and make
# /dev/kvm usable by QEMU when the machine has it (otherwise VMs run under TCG).
set -euo pipefail
log() { printf '[libvirt-start] %s\n' "$*" >&2; }

if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm 2>/dev/null || true
  chmod 0660 /dev/kvm 2>/dev/null || true
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

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
