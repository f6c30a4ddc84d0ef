#!/usr/bin/env bash
# A throwaway test VM shaped like an oVirt VM's CD-ROM (design page): q35, 128 MiB, no
# disk, one empty SATA CD-ROM `sdc`, and the ovirt-vm metadata naming it.
#
#   scripts/test-vm.sh create NAME [UUID]   define and start it; prints the UUID
#   scripts/test-vm.sh remove NAME          destroy and undefine exactly that VM
#
# Uses KVM when /dev/kvm exists, TCG (<domain type='qemu'>, ~4.5 s per start) otherwise.
set -euo pipefail
URI="${CDROM_LIBVIRT_URI:-qemu:///system}"
die() { printf 'test-vm: %s\n' "$*" >&2; exit 2; }

cmd="${1:-}"; name="${2:-}"
[[ "$name" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "NAME must match [A-Za-z0-9_-]{1,64}"

case "$cmd" in
  create)
    uuid="${3:-$(cat /proc/sys/kernel/random/uuid)}"
    [[ "$uuid" =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]] || die "UUID is not a UUID: $uuid"
    virt_type=qemu
    [ -c /dev/kvm ] && virt_type=kvm
    alias_id="$(cat /proc/sys/kernel/random/uuid)"
    xml="$(mktemp)"
    trap 'rm -f "$xml"' EXIT
    # Values are validated above, so the here-document cannot inject markup.
    cat >"$xml" <<XML
<domain type='${virt_type}'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <metadata>
    <ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
      <ovirt-vm:device devtype="disk" name="sdc"/>
    </ovirt-vm:vm>
  </metadata>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='cdrom'>
      <driver name='qemu' error_policy='report'/>
      <source startupPolicy='optional'/>
      <target dev='sdc' bus='sata'/>
      <readonly/>
      <alias name='ua-${alias_id}'/>
      <address type='drive' controller='0' bus='0' target='0' unit='2'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh -q -c "$URI" define "$xml" >/dev/null
    if ! virsh -q -c "$URI" start "$name" >/dev/null; then
      virsh -q -c "$URI" undefine --nvram "$name" >/dev/null 2>&1 || true
      die "could not start $name"
    fi
    printf '%s\n' "$uuid"
    ;;
  remove)
    if virsh -q -c "$URI" domstate "$name" >/dev/null 2>&1; then
      virsh -q -c "$URI" destroy "$name" >/dev/null 2>&1 || true
      virsh -q -c "$URI" undefine --nvram "$name" >/dev/null 2>&1 || true
    fi
    ;;
  *) die "usage: test-vm.sh create NAME [UUID] | remove NAME" ;;
esac
