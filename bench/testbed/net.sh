#!/usr/bin/env bash
# net.sh - the testbed's hosts: network namespaces on one machine (root).
#
#   bench/testbed/net.sh up [EDGES]     core, EDGES edge hosts (default 2), a client
#   bench/testbed/net.sh shape HOST RATE   tc tbf both ways on HOST's link (e.g. 2mbit; "off")
#   bench/testbed/net.sh bytes HOST        "tx_bytes rx_bytes" of HOST's interface
#   bench/testbed/net.sh selfcheck         reachability, and a shaped link's measured rate
#   bench/testbed/net.sh down              stops every process in them, removes them
#
# Hosts are namespaces dctb-<name> (core, edge1, edge2, ..., client), each
# with one veth "eth0" at 10.77.0.<n>/24, plugged into a bridge that lives in
# its own namespace (dctb-sw): nothing in the root namespace is addressed or
# changed. Bandwidth is tc tbf on both ends of a host's veth; one-way delay
# comes from relay.py (this kernel has no netem), started by the experiments
# on the connections they delay. Bytes are the interfaces' own counters.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=dctb
SW=$PREFIX-sw

addr_of() { # HOST -> its address
  case "$1" in
    core) echo 10.77.0.1 ;;
    client) echo 10.77.0.100 ;;
    edge*) echo "10.77.0.$((10 + ${1#edge}))" ;;
    *) echo "net.sh: unknown host $1" >&2; return 1 ;;
  esac
}

hosts() { ip netns list | awk '{print $1}' | grep "^$PREFIX-" | grep -v "^$SW$" | sed "s/^$PREFIX-//" || true; }

up() {
  local edges=${1:-2}
  [ "$(id -u)" = 0 ] || { echo "net.sh: needs root (ip netns)" >&2; exit 1; }
  if ip netns list | grep -q "^$PREFIX-"; then
    echo "net.sh: a testbed is already up; run net.sh down first" >&2
    exit 1
  fi
  trap down EXIT # a half-built testbed is removed
  ip netns add $SW
  ip -n $SW link add br0 type bridge
  ip -n $SW link set br0 up
  local h
  for h in core client $(seq -f 'edge%g' 1 "$edges"); do
    ip netns add $PREFIX-$h
    ip -n $PREFIX-$h link set lo up
    ip link add eth0 netns $PREFIX-$h type veth peer name "p-$h" netns $SW
    ip -n $SW link set "p-$h" master br0 up
    ip -n $PREFIX-$h addr add "$(addr_of $h)/24" dev eth0
    ip -n $PREFIX-$h link set eth0 up
  done
  trap - EXIT
  echo "testbed up: core $(addr_of core), client $(addr_of client), $(for i in $(seq 1 "$edges"); do printf 'edge%d %s ' "$i" "$(addr_of edge$i)"; done)"
}

shape() { # HOST RATE|off: HOST's uplink (its eth0) and downlink (the bridge port)
  local h=$1 rate=$2
  local d
  for d in "$PREFIX-$h eth0" "$SW p-$h"; do
    set -- $d
    tc -n "$1" qdisc del dev "$2" root 2>/dev/null || true
    if [ "$rate" != off ]; then
      # burst: at least one full-size frame per timer tick; latency bounds the queue
      tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst 32kbit latency 400ms
    fi
  done
}

bytes() {
  ip netns exec "$PREFIX-$1" cat /sys/class/net/eth0/statistics/tx_bytes /sys/class/net/eth0/statistics/rx_bytes |
    paste -sd' '
}

down() {
  local ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
}

# Every host reaches every other one; a link shaped to 2 Mbit/s measures
# 2 Mbit/s (within 25%) for a bulk TCP transfer from the client to the core.
selfcheck() {
  local a b
  for a in $(hosts); do
    for b in $(hosts); do
      [ "$a" = "$b" ] && continue
      ip netns exec "$PREFIX-$a" python3 -c "
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect(('$(addr_of "$b")', 9)); sys.exit(0)
except ConnectionRefusedError:
    sys.exit(0)   # the host answered (RST): reachable
except OSError as e:
    print('net.sh: $a cannot reach $b:', e); sys.exit(1)
"
    done
  done
  echo "reachability: every pair of $(hosts | wc -l) hosts ok"
  shape client 2mbit
  local port=5999 rc=0
  # the receiver measures: the sender's count includes its socket buffers
  ip netns exec $PREFIX-client python3 -c "
import socket, time
time.sleep(0.3)
s = socket.create_connection(('$(addr_of core)', $port))
data = b'x' * 16384; t0 = time.monotonic()
while time.monotonic() - t0 < 4: s.sendall(data)
s.close()
" &
  local src=$!
  ip netns exec $PREFIX-core python3 -c "
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', $port)); s.listen(1); c, _ = s.accept()
got, t0, t1 = 0, None, None
while True:
    d = c.recv(65536)
    if not d: break
    if t0 is None: t0 = time.monotonic()
    got += len(d); t1 = time.monotonic()
mbit = got * 8 / (t1 - t0) / 1e6
ok = 1.6 <= mbit <= 2.2
print('shaping: client uplink configured 2 Mbit/s, received %.2f Mbit/s: %s' % (mbit, 'ok' if ok else 'OFF'))
sys.exit(0 if ok else 1)
" || rc=1
  wait $src || true
  shape client off
  python3 "$HERE/relay.py" selfcheck --delay-ms 20 || rc=1
  return $rc
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  shape) shape "$2" "$3" ;;
  bytes) bytes "$2" ;;
  selfcheck) selfcheck ;;
  down) down ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
