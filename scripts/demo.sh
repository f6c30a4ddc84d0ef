#!/usr/bin/env bash
# `npm run demo`: the whole thing on one host, from a fresh Debian 12 + Node 20, as root.
#
# Installs and starts what is missing (scripts/host-setup.sh: libvirt, QEMU, LVM tools,
# RabbitMQ), builds the project, makes a demo block storage domain (a loop-backed LVM VG
# with two ISO volumes) and a demo VM `cdw-demo` with an empty CD-ROM `sdc`, starts the
# worker for host `cdw-demo`, and then, as the engine would, loads ISO A, changes it to
# ISO B and ejects it — printing each result event, the worker's log lines and what the
# VM's CD-ROM shows after each step. Then the worker keeps running until Ctrl-C; on exit
# everything the demo made is removed.
#
#   npm run demo                  interactive: keeps the worker running until Ctrl-C
#   npm run demo -- --once        (or DEMO_EXIT=1) exit after the three steps, cleaned up
#
# Environment: DEMO_DIR (default /var/tmp/cdw-demo), DEMO_HTTP_PORT (default: first free
# port from 9464), CDROM_AMQP_URL (default: the local broker).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD

ONCE=${DEMO_EXIT:-0}
for a in "$@"; do
  case "$a" in
    --once) ONCE=1 ;;
    *) printf 'usage: %s [--once]\n' "$0" >&2; exit 2 ;;
  esac
done

# Fixed demo names, so that a demo that was killed hard is cleaned up by the next one.
HOST_ID=cdw-demo
VM_NAME=cdw-demo
VM_UUID=cd0cd0cd-de30-4000-8000-0000000000a1
POOL_ID=cd0cd0cd-de30-4000-8000-0000000000f0
SD_ID=cd0cd0cd-de30-4000-8000-0000000000d1      # the block storage domain = the VG name
DRIVE=sdc
DEMO_DIR=${DEMO_DIR:-/var/tmp/cdw-demo}
STORAGE_ROOT=$DEMO_DIR/rhev
LOG_DIR=$ROOT_DIR/.tmp/demo
LOG_JSON=$LOG_DIR/worker.log.json
AMQP_URL=${CDROM_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}
LIBVIRT_URI=qemu:///system
export CDROM_LIBVIRT_URI=$LIBVIRT_URI

bold=''; dim=''; off=''
if [ -t 1 ]; then bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
info() { printf '%s\n' "$*"; }
run_shown() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }
demo_ts() { node --import tsx scripts/demo.ts "$@"; }
cli() { node bin/cdrom-worker.js "$@"; }

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it installs packages, makes loop devices and VMs)" >&2; exit 2; }

# ---------------------------------------------------------------------------- cleanup
WORKER_PID=''
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  step "cleaning up"
  if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$WORKER_PID" 2>/dev/null || true
    info "worker stopped"
  fi
  remove_leftovers
  info "removed VM $VM_NAME, storage domain $SD_ID, queues of host $HOST_ID, $DEMO_DIR"
  info "worker log (JSON): $LOG_JSON"
  exit "$rc"
}

remove_leftovers() {
  bash scripts/test-vm.sh remove "$VM_NAME" || true
  if [ -d "$DEMO_DIR" ]; then
    bash scripts/test-storage.sh remove "$DEMO_DIR" "$SD_ID" || true
    rm -rf "${DEMO_DIR:?}"
  fi
  if [ -x node_modules/.bin/tsx ]; then demo_ts delete-queues "$HOST_ID" "$AMQP_URL" 2>/dev/null || true; fi
}

# ---------------------------------------------------------------------------- setup
step "host: packages, RabbitMQ, libvirtd (scripts/host-setup.sh)"
bash scripts/host-setup.sh
if [ ! -x node_modules/.bin/tsx ] || [ ! -f build/Release/virt.node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  run_shown npm ci --no-audit --no-fund
fi
if [ ! -f dist/cli/main.js ] || [ -n "$(find src -newer dist/cli/main.js -name '*.ts' -print -quit)" ]; then
  run_shown npm run -s build
fi

remove_leftovers >/dev/null 2>&1   # a previous demo that was killed hard
trap cleanup EXIT
trap 'exit 130' INT TERM

step "demo block storage domain $SD_ID: a loop-backed LVM VG with two ISO volumes"
mkdir -p "$STORAGE_ROOT" "$LOG_DIR"
chmod 0755 "$DEMO_DIR" "$STORAGE_ROOT"   # QEMU runs as libvirt-qemu
bash scripts/test-storage.sh create-block "$DEMO_DIR" "$SD_ID" 2 >"$DEMO_DIR/storage.json"
eval "$(demo_ts storage-vars "$DEMO_DIR/storage.json")"
PV=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).pv)' "$DEMO_DIR/storage.json")
info "ISO A: image $IMG_A volume $VOL_A (label $LABEL_A)"
info "ISO B: image $IMG_B volume $VOL_B (label $LABEL_B)"
# The worker's LVM sees only the demo PV: it must not list (or reap) anyone else's LVs.
mkdir -p "$DEMO_DIR/lvm"
printf 'devices {\n  filter = [ "a|^%s$|", "r|.*|" ]\n}\n' "$PV" >"$DEMO_DIR/lvm/lvm.conf"

step "demo VM $VM_NAME ($VM_UUID): q35, no disk, one empty SATA CD-ROM $DRIVE"
[ -c /dev/kvm ] || info "(no /dev/kvm: the VM runs under TCG, its start takes a few seconds)"
bash scripts/test-vm.sh create "$VM_NAME" "$VM_UUID" >/dev/null
demo_ts show-drive "$VM_NAME" "$DRIVE" "$LIBVIRT_URI"

HTTP_PORT=${DEMO_HTTP_PORT:-}
if [ -z "$HTTP_PORT" ]; then
  for p in $(seq 9464 9480); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then HTTP_PORT=$p; break; fi
  done
fi

step "worker for host $HOST_ID (log: $LOG_JSON)"
: >"$LOG_JSON"
# The worker's environment, in a file that another shell can source too: the CLI tools
# (status, send, events, dlq) then see the same broker, host id, storage root, LVM
# activation mode and LVM configuration as the worker. The worker itself is started from it.
DEMO_ENV=$DEMO_DIR/demo.env
{
  printf '# cdrom-worker demo: `set -a; . %s; set +a` in another shell\n' "$DEMO_ENV"
  printf 'CDROM_HOST_ID=%q\n' "$HOST_ID"
  printf 'CDROM_AMQP_URL=%q\n' "$AMQP_URL"
  printf 'CDROM_LIBVIRT_URI=%q\n' "$LIBVIRT_URI"
  printf 'CDROM_LVM_ACTIVATION=loop\n'
  printf 'CDROM_STORAGE_ROOT=%q\n' "$STORAGE_ROOT"
  printf 'CDROM_HTTP_PORT=%q\n' "$HTTP_PORT"
  printf 'LVM_SYSTEM_DIR=%q\n' "$DEMO_DIR/lvm"
  # The demo's worker recovers only the demo VM: other VMs on this host are not its business.
  printf 'CDROM_DOMAIN_FILTER=%q\n' '^cdw-demo$'
} >"$DEMO_ENV"
(
  set -a
  # shellcheck source=/dev/null
  . "$DEMO_ENV"
  set +a
  export CDROM_LOG_LEVEL=debug
  printf '%s$ set -a; . %s; set +a; CDROM_LOG_LEVEL=debug npx cdrom-worker run%s\n' "$dim" "$DEMO_ENV" "$off"
  exec node bin/cdrom-worker.js run >>"$LOG_JSON" 2>&1
) &
WORKER_PID=$!
LOG_SEEN=0
show_log() {
  sleep 0.2   # let the worker's last lines reach the file
  local total
  total=$(wc -l <"$LOG_JSON")
  if ((total > LOG_SEEN)); then
    printf '%s-- worker log%s\n' "$dim" "$off"
    tail -n +"$((LOG_SEEN + 1))" "$LOG_JSON" | head -n "$((total - LOG_SEEN))" |
      node_modules/.bin/pino-pretty --colorize=false --singleLine --translateTime 'SYS:HH:MM:ss.l' \
        --messageFormat '{if component}{component}: {end}{msg}' --ignore 'pid,hostname,hostId,component' |
      sed 's/^/  | /'
  fi
  LOG_SEEN=$total
}
if ! demo_ts wait-ready "$HTTP_PORT" 60; then
  show_log
  echo "demo: the worker did not become ready" >&2
  exit 1
fi
show_log
info "ready: http://127.0.0.1:$HTTP_PORT/readyz answers 200"

# ---------------------------------------------------------------------------- the three steps
send() {
  local title=$1; shift
  step "$title"
  printf '%s$ npx cdrom-worker send --wait --host %s --vm %s --drive %s %s%s\n' "$dim" "$HOST_ID" "$VM_UUID" "$DRIVE" "$*" "$off"
  if ! cli send --wait --timeout 60000 --host "$HOST_ID" --vm "$VM_UUID" --drive "$DRIVE" "$@"; then
    info "(the command did not complete: see the event above and the log below)"
  fi
  show_log
  printf '%s-- what the VM shows now%s\n' "$dim" "$off"
  demo_ts show-drive "$VM_NAME" "$DRIVE" "$LIBVIRT_URI"
}

send "1/3 load ISO A ($LABEL_A) into the empty drive" --pdiv "$POOL_ID,$SD_ID,$IMG_A,$VOL_A"
send "2/3 change to ISO B ($LABEL_B)" --pdiv "$POOL_ID,$SD_ID,$IMG_B,$VOL_B"
send "3/3 eject" --eject

step "metrics (http://127.0.0.1:$HTTP_PORT/metrics: the cdrom_* series, without buckets and process metrics)"
demo_ts metrics "$HTTP_PORT"

if [ "$ONCE" = 1 ]; then
  exit 0
fi

step "the worker keeps running; Ctrl-C stops it and removes everything the demo made"
info "try, in another shell (as root), with the demo's environment:"
info "  cd $ROOT_DIR && set -a && . $DEMO_ENV && set +a"
info "  npx cdrom-worker status"
info "  npx cdrom-worker send --wait --host $HOST_ID --vm $VM_UUID --drive $DRIVE --pdiv $POOL_ID,$SD_ID,$IMG_A,$VOL_A"
info "  npx cdrom-worker events --host $HOST_ID"
info "  npx cdrom-worker dlq list --host $HOST_ID"
info "  curl -s http://127.0.0.1:\$CDROM_HTTP_PORT/metrics | grep ^cdrom_"
info "  tail -f $LOG_JSON | npx pino-pretty"
wait "$WORKER_PID" || true
WORKER_PID=''
