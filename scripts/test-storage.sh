#!/usr/bin/env bash
# Test storage domains on a kernel without device-mapper (ENVIRONMENT.md, LVM section).
#
#   test-storage.sh create-block DIR VG_UUID N   loop-backed PV (image under DIR), VG named
#                                                VG_UUID, N ISO LVs with vdsm-style tags
#   test-storage.sh create-file ROOT DOMAIN_UUID file domain ROOT/mnt/<server:_export>/DOMAIN_UUID
#                                                with one ISO volume
#   test-storage.sh remove DIR|ROOT UUID         removes exactly what create-* made
#
# create-* print a JSON description on stdout. LVM only ever scans our own PV (a
# devices filter), and only loop devices over our image file or our PV are detached.
set -euo pipefail
export LVM_SUPPRESS_FD_WARNINGS=1 LC_ALL=C

die() { printf 'test-storage: %s\n' "$*" >&2; exit 2; }
uuid() { cat /proc/sys/kernel/random/uuid; }
is_uuid() { [[ $1 =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]]; }
lvm_cfg() { printf 'devices { filter = [ "a|^%s$|", "r|.*|" ] } global { activation = 0 }' "$1"; }

# LVM chatters on stderr here ("Activation disabled"): show it only when a step fails.
quiet() { local out; out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }; }

EXTENT_MIB=4   # one extent per ISO volume: small, and every LV starts at a distinct offset

# make_iso OUT LABEL: a real ISO 9660 image with a volume label and one file.
make_iso() {
  local out=$1 label=$2 src
  src=$(mktemp -d)
  printf 'cdrom-worker test media %s\n' "$label" >"$src/README.TXT"
  genisoimage -quiet -V "$label" -o "$out" "$src"
  rm -rf "$src"
}

create_block() {
  local dir=$1 vg=$2 n=$3
  is_uuid "$vg" || die "VG name must be a UUID: $vg"
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 64)) || die "N must be 1..64"
  mkdir -p "$dir"
  local img="$dir/$vg.pv.img"
  [[ -e $img ]] && die "$img exists"
  truncate -s $(((n + 2) * EXTENT_MIB))M "$img"
  local pv cfg
  pv=$(losetup --find --show "$img")
  cfg=$(lvm_cfg "$pv")
  quiet pvcreate --config "$cfg" "$pv"
  quiet vgcreate --config "$cfg" -s ${EXTENT_MIB}m "$vg" "$pv"

  local vols="" i lv image label start size pe_start ext offset bytes map iso
  iso=$(mktemp --suffix=.iso)
  for ((i = 1; i <= n; i++)); do
    lv=$(uuid)
    image=$(uuid)
    label="CDW_ISO_$i"
    quiet lvcreate --config "$cfg" -an -Zn -n "$lv" -L ${EXTENT_MIB}m \
      --addtag "IU_$image" --addtag PU_00000000-0000-0000-0000-000000000000 --addtag "MD_$i" "$vg"
    read -r start size pe_start ext < <(pvs --config "$cfg" --segments --units b --nosuffix --noheadings \
      -o pvseg_start,pvseg_size,pe_start,vg_extent_size -S "vg_name=$vg && lv_name=$lv" 2>/dev/null)
    offset=$((pe_start + start * ext))
    bytes=$((size * ext))
    make_iso "$iso" "$label"
    # Written through the same kind of mapping the worker makes, so the test reads back
    # exactly the bytes the LV holds.
    map=$(losetup --find --show --offset "$offset" --sizelimit "$bytes" "$pv")
    dd if="$iso" of="$map" bs=64k conv=fsync status=none
    losetup --detach "$map"
    vols+="${vols:+,}{\"imageID\":\"$image\",\"volumeID\":\"$lv\",\"label\":\"$label\",\"offset\":$offset,\"size\":$bytes}"
  done
  rm -f "$iso"
  printf '{"kind":"block","vg":"%s","pv":"%s","image":"%s","lvmFilter":["a|^%s$|","r|.*|"],"volumes":[%s]}\n' \
    "$vg" "$pv" "$img" "$pv" "$vols"
}

create_file() {
  local root=$1 dom=$2
  is_uuid "$dom" || die "domain must be a UUID: $dom"
  local image vol dir
  image=$(uuid)
  vol=$(uuid)
  dir="$root/mnt/test-server:_export/$dom/images/$image"
  [[ -e "$root/mnt/test-server:_export/$dom" ]] && die "$root/mnt/test-server:_export/$dom exists"
  mkdir -p "$dir"
  make_iso "$dir/$vol" CDW_FILE_ISO
  printf '{"kind":"file","root":"%s","domainID":"%s","domainDir":"%s","volumes":[{"imageID":"%s","volumeID":"%s","label":"CDW_FILE_ISO","path":"%s"}]}\n' \
    "$root" "$dom" "$root/mnt/test-server:_export/$dom" "$image" "$vol" "$dir/$vol"
}

# loop devices whose backing file is $1 (a file or a device path)
loops_over() { losetup --noheadings --output NAME --associated "$1" 2>/dev/null || true; }

remove() {
  local dir=$1 id=$2
  is_uuid "$id" || die "not a UUID: $id"
  local img="$dir/$id.pv.img" pv m
  if [[ -f $img ]]; then
    for pv in $(loops_over "$img"); do
      # Mappings over our PV were made by the worker (or by create-block) for our LVs.
      for m in $(loops_over "$pv"); do losetup --detach "$m" || true; done
      vgremove -q -f --config "$(lvm_cfg "$pv")" "$id" >/dev/null 2>&1 || true
      pvremove -q -f --config "$(lvm_cfg "$pv")" "$pv" >/dev/null 2>&1 || true
      losetup --detach "$pv" || true
    done
    rm -f "$img"
  fi
  if [[ -d "$dir/mnt/test-server:_export/$id" ]]; then
    rm -rf "${dir:?}/mnt/test-server:_export/$id"
    rmdir "$dir/mnt/test-server:_export" 2>/dev/null || true
  fi
  rm -rf "${dir:?}/mnt/blockSD/$id"
}

cmd=${1:-}
case "$cmd" in
  create-block) (($# == 4)) || die "usage: $0 create-block DIR VG_UUID N"; create_block "$2" "$3" "$4" ;;
  create-file) (($# == 3)) || die "usage: $0 create-file ROOT DOMAIN_UUID"; create_file "$2" "$3" ;;
  remove) (($# == 3)) || die "usage: $0 remove DIR|ROOT UUID"; remove "$2" "$3" ;;
  *) die "usage: $0 create-block DIR VG_UUID N | create-file ROOT DOMAIN_UUID | remove DIR|ROOT UUID" ;;
esac
