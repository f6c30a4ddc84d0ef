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

# Prometheus (its promtool checks deploy/prometheus/; the e2e test runs the binary on a
# port of its own). Debian's package starts a prometheus service on install and enables
# it at boot; nothing here wants it (it would scrape and keep a TSDB on every test host),
# so the install runs under a policy-rc.d that forbids starting services, unless the
# host already has one, and the service is then disabled. Left alone if it is already
# installed and running: an operator may have started it on purpose.
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed'; then
  log "installing prometheus (service left stopped and disabled)"
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# host-setup.sh: no service starts while prometheus installs\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  install_ok=0
  { apt-get install -y -qq --no-install-recommends prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; } && install_ok=1
  ((own_policy)) && rm -f "$policy"
  ((install_ok)) || { log "prometheus install failed"; exit 1; }
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null && [ -e /etc/init.d/prometheus ]; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi

bash "$(dirname "$0")/libvirt-start.sh"
