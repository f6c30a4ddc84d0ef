#!/usr/bin/env bash
# Install (Debian packages, as root) and start everything cdrom-worker and its tests
# need on this host. Idempotent: installs only what is missing, starts only what is down.
set -euo pipefail

log() { printf '[host-setup] %s\n' "$*" >&2; }

PACKAGES=(
  libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  lvm2 genisoimage util-linux psmisc procps
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# RabbitMQ: this kind of machine starts it; start it if it is down.
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  fi
  log "starting rabbitmq"
  rabbitmq-server -detached || true
  # await_startup fails at once until the node has registered (its name may be
  # rabbit@localhost or rabbit@<hostname>, per rabbitmq-env.conf): ask until it answers.
  for _ in $(seq 1 60); do
    rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 && break
    sleep 1
  done
  rabbitmqctl -q await_startup --timeout 5 >/dev/null
fi

bash "$(dirname "$0")/libvirt-start.sh"
