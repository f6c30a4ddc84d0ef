#!/usr/bin/env bash
# A throwaway RabbitMQ cluster on this machine, beside the default node (rabbit@localhost,
# 127.0.0.1:5672), which this script never touches.
#
#   scripts/rabbitmq-cluster.sh start | stop | status
#
# Nodes <prefix>1..N@localhost listen on 127.0.0.1:<base>..<base+N-1> (AMQP), with the
# Erlang distribution on <amqp port>+20000 and, when CDW_CLUSTER_TLS_DIR is set, an AMQPS
# listener on <amqp port>+1000. Each has its own mnesia, log, config, env and
# enabled-plugins files (no plugins) under the root. They run as the `rabbitmq` user with
# HOME=/var/lib/rabbitmq, so they share the default node's Erlang cookie and plain
# `rabbitmqctl -n <prefix>1@localhost …` reaches them. Node 1 starts first; nodes 2..N
# then boot together and find it through classic-config peer discovery (no
# stop_app/join_cluster/start_app round, ~10 s each on a loaded 2-core machine); any node
# that still came up on its own is joined with `join_cluster`.
#
# Settings (environment):
#   CDW_CLUSTER_ROOT       data root (default ${TMPDIR:-/tmp}/cdrom-worker-cluster);
#                          `stop` deletes it
#   CDW_CLUSTER_PREFIX     node name prefix (default cdw)
#   CDW_CLUSTER_SIZE       number of nodes (default 3)
#   CDW_CLUSTER_BASE_PORT  AMQP port of node 1 (default 5681)
#   CDW_CLUSTER_TLS_DIR    directory with ca.pem, server.pem, server.key: adds an SSL listener
#
# Idempotent: `start` starts only the nodes that are down and joins only those not yet
# clustered; `stop` stops only the nodes whose pid files it wrote (checking that each pid
# is still that node's Erlang VM). Needs root (or the rabbitmq user).
set -euo pipefail

ROOT=${CDW_CLUSTER_ROOT:-${TMPDIR:-/tmp}/cdrom-worker-cluster}
PREFIX=${CDW_CLUSTER_PREFIX:-cdw}
SIZE=${CDW_CLUSTER_SIZE:-3}
BASE_PORT=${CDW_CLUSTER_BASE_PORT:-5681}
TLS_DIR=${CDW_CLUSTER_TLS_DIR:-}
NODE_HOST=localhost
RMQ_HOME=/var/lib/rabbitmq

T0=$(date +%s%N)
log() { printf '[rabbitmq-cluster +%ss] %s\n' "$(( ($(date +%s%N) - T0) / 1000000000 ))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $PREFIX =~ ^[a-z][a-z0-9_-]*$ ]] || die "CDW_CLUSTER_PREFIX must match [a-z][a-z0-9_-]*"
[[ $PREFIX != rabbit ]] || die "the prefix 'rabbit' would clash with the default node"
[[ $SIZE =~ ^[1-9]$ ]] || die "CDW_CLUSTER_SIZE must be 1..9"
[[ $BASE_PORT =~ ^[0-9]+$ ]] && ((BASE_PORT >= 1024 && BASE_PORT + SIZE <= 44000)) || die "CDW_CLUSTER_BASE_PORT out of range"
((BASE_PORT > 5672 || BASE_PORT + SIZE <= 5672)) || die "the port range would include the default node's 5672"
[[ $ROOT == /* && $ROOT != / ]] || die "CDW_CLUSTER_ROOT must be an absolute path"
if [[ -n $TLS_DIR ]]; then
  for f in ca.pem server.pem server.key; do [[ -r $TLS_DIR/$f ]] || die "CDW_CLUSTER_TLS_DIR has no readable $f"; done
fi

node_name() { printf '%s%d@%s' "$PREFIX" "$1" "$NODE_HOST"; }
node_dir() { printf '%s/%s%d' "$ROOT" "$PREFIX" "$1"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }

ctl() { rabbitmqctl "$@"; }

# Runs a command as the rabbitmq user, keeping the given environment.
as_rabbitmq() {
  if [[ $(id -u) == "$(id -u rabbitmq)" ]]; then
    "$@"
  elif [[ $(id -u) == 0 ]]; then
    runuser -u rabbitmq -- "$@"
  else
    die "run as root or as the rabbitmq user"
  fi
}

# The pid of node $1's Erlang VM if it is running, else nothing (exit 1). The pid file
# is checked against the process's environment (the VM's command line does not name the
# node in 3.10) so that a recycled pid is never used.
node_pid() {
  local pidfile pid
  pidfile="$(node_dir "$1")/pid"
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/environ && $(cat "/proc/$pid/comm" 2>/dev/null) == beam* ]] || return 1
  tr '\0' '\n' <"/proc/$pid/environ" | grep -qx -- "RABBITMQ_NODENAME=$(node_name "$1")" || return 1
  echo "$pid"
}

write_node_files() {
  local i=$1 dir port
  dir=$(node_dir "$i")
  port=$(amqp_port "$i")
  mkdir -p "$dir/mnesia" "$dir/log"
  echo '[].' >"$dir/enabled_plugins"
  # Our own env file: the system one names the default node and must not apply here.
  cat >"$dir/rabbitmq-env.conf" <<EOF
NODENAME=$(node_name "$i")
EOF
  {
    echo "listeners.tcp.1 = 127.0.0.1:$port"
    echo "loopback_users.guest = true"
    # Node 2..N look for node 1 while they boot and join it if it already runs, which
    # saves a stop_app/join_cluster/start_app round; start checks membership afterwards
    # and runs join_cluster for any node that came up on its own.
    echo "cluster_formation.peer_discovery_backend = classic_config"
    echo "cluster_formation.classic_config.nodes.1 = $(node_name 1)"
    if [[ -n $TLS_DIR ]]; then
      echo "listeners.ssl.1 = 127.0.0.1:$((port + 1000))"
      echo "ssl_options.cacertfile = $dir/tls/ca.pem"
      echo "ssl_options.certfile = $dir/tls/server.pem"
      echo "ssl_options.keyfile = $dir/tls/server.key"
      echo "ssl_options.verify = verify_peer"
      echo "ssl_options.fail_if_no_peer_cert = false"
    fi
  } >"$dir/rabbitmq.conf"
  if [[ -n $TLS_DIR ]]; then
    mkdir -p "$dir/tls"
    cp "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$dir/tls/"
    chmod 0600 "$dir/tls/server.key"
  fi
  chown -R rabbitmq:rabbitmq "$dir"
}

start_node() {
  local i=$1 dir port
  dir=$(node_dir "$i")
  port=$(amqp_port "$i")
  write_node_files "$i"
  as_rabbitmq env -i PATH="$PATH" HOME="$RMQ_HOME" LANG=C.UTF-8 \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node_name "$i")" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_DIST_PORT=$((port + 20000)) \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_FLAGS='-kernel inet_dist_use_interface {127,0,0,1}' \
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached 9>&-
}

wait_node() {
  ctl -q -n "$(node_name "$1")" wait "$(node_dir "$1")/pid" --timeout 120 >/dev/null
}

# Stops node $1 if its VM runs (SIGTERM, SIGKILL after 15 s).
stop_node() {
  local pid n
  pid=$(node_pid "$1") || return 0
  kill -TERM "$pid"
  for ((n = 0; n < 150; n++)); do
    [[ -d /proc/$pid ]] || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# Node names that node 1 currently sees as running members of its cluster.
running_members() {
  ctl -q -n "$(node_name 1)" cluster_status --formatter json | jq -r '.running_nodes[]'
}

cmd_start() {
  local t0 i started=() pids=() failed=() members n=0
  t0=$(date +%s%N)
  mkdir -p "$ROOT"
  chown rabbitmq:rabbitmq "$ROOT"
  # Node 1 first and alone: the others find it by peer discovery only if it is already
  # up when they boot (a node that boots without it comes up on its own and costs a
  # stop_app/join_cluster/start_app round, ~10 s here, below).
  if ! node_pid 1 >/dev/null; then
    rm -f "$(node_dir 1)/pid"
    start_node 1
    n=1
    wait_node 1 || die "node $(node_name 1) did not start; see $(node_dir 1)/log"
    log "$(node_name 1) running"
  fi
  for ((i = 2; i <= SIZE; i++)); do
    if node_pid "$i" >/dev/null; then continue; fi
    rm -f "$(node_dir "$i")/pid"
    start_node "$i"
    started+=("$i")
  done
  # Waiting is most of the bring-up: wait for every node at once.
  for i in "${started[@]}"; do
    wait_node "$i" &
    pids+=($!)
  done
  for ((i = 0; i < ${#pids[@]}; i++)); do wait "${pids[i]}" || failed+=("${started[i]}"); done
  # A node that failed to boot gets one fresh second try.
  for i in "${failed[@]}"; do
    log "$(node_name "$i") did not start; starting it again from scratch"
    stop_node "$i"
    rm -rf -- "$(node_dir "$i")"
    start_node "$i"
    wait_node "$i" || die "node $(node_name "$i") did not start; see $(node_dir "$i")/log"
  done
  ((${#started[@]} == 0)) || log "node(s) ${started[*]} running"
  if ((SIZE > 1)); then
    members=$(running_members)
    for ((i = 2; i <= SIZE; i++)); do
      if grep -qx -- "$(node_name "$i")" <<<"$members"; then continue; fi
      ctl -q -n "$(node_name "$i")" stop_app >/dev/null
      ctl -q -n "$(node_name "$i")" join_cluster "$(node_name 1)" >/dev/null
      ctl -q -n "$(node_name "$i")" start_app >/dev/null
      log "$(node_name "$i") joined $(node_name 1)"
    done
  fi
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "cluster up in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s ($((n + ${#started[@]})) node(s) started)"
  print_nodes
}

print_nodes() {
  local i pid port
  for ((i = 1; i <= SIZE; i++)); do
    port=$(amqp_port "$i")
    if pid=$(node_pid "$i"); then
      printf '%s\trunning\tpid %s\tamqp://127.0.0.1:%s%s\n' "$(node_name "$i")" "$pid" "$port" \
        "$([[ -n $TLS_DIR || -d $(node_dir "$i")/tls ]] && printf '\tamqps://localhost:%s' $((port + 1000)))"
    else
      printf '%s\tstopped\n' "$(node_name "$i")"
    fi
  done
}

cmd_status() {
  print_nodes
  if node_pid 1 >/dev/null; then
    echo "running members seen by $(node_name 1): $(running_members | tr '\n' ' ')"
  fi
}

cmd_stop() {
  local i pids=() n=0
  # SIGTERM makes the Erlang VM stop cleanly; the data is thrown away anyway, so a node
  # that takes longer than 15 s is killed. All nodes at once.
  for ((i = 1; i <= SIZE; i++)); do
    if node_pid "$i" >/dev/null; then
      stop_node "$i" &
      pids+=($!)
      n=$((n + 1))
    fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
  if [[ -d $ROOT ]]; then rm -rf -- "$ROOT"; fi
  echo "stopped $n node(s); removed $ROOT"
}

main() {
  local cmd=${1:-}
  case $cmd in
    start | stop | status) ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
  esac
  # One invocation at a time per root. The nodes must not inherit this descriptor (see
  # start_node), or they would hold the lock for as long as they run.
  mkdir -p "$(dirname "$ROOT")"
  exec 9>"$ROOT.lock"
  flock 9
  "cmd_$cmd"
}

main "$@"
