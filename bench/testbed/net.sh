#!/usr/bin/env bash
# net.sh - the testbed's hosts: network namespaces on one machine (root).
#
#   bench/testbed/net.sh up [EDGES]          core, EDGES edge hosts (default 2), a client
#   bench/testbed/net.sh shape HOST RATE     tc tbf both ways on HOST's first link (e.g. 2mbit; "off")
#   bench/testbed/net.sh counters            "HOST IFACE tx_bytes rx_bytes" for every interface
#   bench/testbed/net.sh selfcheck           reachability, and a shaped link's measured rate
#   bench/testbed/net.sh down                stops every process in them, removes them
#
# Hosts are namespaces dctb-<name>. Two networks, as at a real edge site:
#   backhaul 10.77.0.0/24  core 10.77.0.1, edgeN 10.77.0.(10+N)    (eth0)
#   access   10.78.0.0/24  edgeN 10.78.0.(10+N) (eth1), client 10.78.0.100 (eth0)
# so the store's traffic and the clients' traffic cross different links and
# each link's own counters measure one of them: an edge's eth0 carries only
# replication, its eth1 only client requests. Each network is a bridge in its
# own namespace (dctb-sw); nothing in the root namespace is addressed or
# changed. Bandwidth is tc tbf on both ends of a veth; one-way delay comes
# from relay.py (this kernel has no netem), started by testbed.py on the
# connections it delays. Bytes are the interfaces' own counters.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=dctb
SW=$PREFIX-sw

addr_of() { # HOST [backhaul|access] -> its address on that network
  case "$1/${2:-}" in
    core/*) echo 10.77.0.1 ;;
    client/*) echo 10.78.0.100 ;;
    edge*/access) echo "10.78.0.$((10 + ${1#edge}))" ;;
    edge*/*) echo "10.77.0.$((10 + ${1#edge}))" ;;
    *) echo "net.sh: unknown host $1" >&2; return 1 ;;
  esac
}

hosts() { ip netns list | awk '{print $1}' | grep "^$PREFIX-" | grep -v "^$SW$" | sed "s/^$PREFIX-//" || true; }

# plug HOST IFACE BRIDGE ADDR: a veth from HOST's IFACE to a port of BRIDGE
plug() {
  local port=p-$1-$2
  ip link add "$2" netns $PREFIX-$1 type veth peer name "$port" netns $SW
  ip -n $SW link set "$port" master "$3" up
  ip -n $PREFIX-$1 addr add "$4/24" dev "$2"
  ip -n $PREFIX-$1 link set "$2" up
}

up() {
  local edges=${1:-2}
  [ "$(id -u)" = 0 ] || { echo "net.sh: needs root (ip netns)" >&2; exit 1; }
  if ip netns list | grep -q "^$PREFIX-"; then
    echo "net.sh: a testbed is already up; run net.sh down first" >&2
    exit 1
  fi
  trap down EXIT # a half-built testbed is removed
  ip netns add $SW
  local h br
  for br in br0 br1; do
    ip -n $SW link add $br type bridge
    ip -n $SW link set $br up
  done
  for h in core client $(seq -f 'edge%g' 1 "$edges"); do
    ip netns add $PREFIX-$h
    ip -n $PREFIX-$h link set lo up
    case $h in
      core) plug core eth0 br0 "$(addr_of core)" ;;
      client) plug client eth0 br1 "$(addr_of client)" ;;
      edge*)
        plug $h eth0 br0 "$(addr_of $h backhaul)"
        plug $h eth1 br1 "$(addr_of $h access)"
        ;;
    esac
  done
  trap - EXIT
  echo "testbed up: core $(addr_of core), client $(addr_of client), $(for i in $(seq 1 "$edges"); do printf 'edge%d %s/%s ' "$i" "$(addr_of edge$i backhaul)" "$(addr_of edge$i access)"; done)"
}

shape() { # HOST RATE|off: HOST's uplink (its eth0) and downlink (the bridge port)
  local h=$1 rate=$2
  local d
  for d in "$PREFIX-$h eth0" "$SW p-$h-eth0"; do
    set -- $d
    tc -n "$1" qdisc del dev "$2" root 2>/dev/null || true
    if [ "$rate" != off ]; then
      # burst: at least one full-size frame per timer tick; latency bounds the queue
      tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst 32kbit latency 400ms
    fi
  done
}

counters() { # one line per host interface: HOST IFACE TX_BYTES RX_BYTES
  local h
  for h in $(hosts); do
    ip netns exec "$PREFIX-$h" sh -c 'for d in /sys/class/net/eth*; do
      echo "${d##*/} $(cat $d/statistics/tx_bytes) $(cat $d/statistics/rx_bytes)"; done' | sed "s/^/$h /"
  done
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

# Every host reaches every other host on a network they share, and only
# those (the client cannot reach the core); a link shaped to 2 Mbit/s
# measures 2 Mbit/s (within 25%) for a bulk TCP transfer from the client to
# an edge host.
selfcheck() {
  local a b want
  for a in $(hosts); do
    for b in $(hosts); do
      [ "$a" = "$b" ] && continue
      want=0
      case "$a/$b" in client/core | core/client) want=1 ;; esac
      ip netns exec "$PREFIX-$a" python3 -c "
import socket, sys
want_fail = $want
s = socket.socket(); s.settimeout(1)
try:
    s.connect(('$(addr_of "$b" "$([ "$a" = client ] && echo access || echo backhaul)")', 9)); ok = True
except ConnectionRefusedError:
    ok = True   # the host answered (RST): reachable
except OSError as e:
    ok = False
if ok == bool(want_fail):
    print('net.sh: $a', 'reaches' if ok else 'cannot reach', '$b'); sys.exit(1)
"
    done
  done
  echo "reachability: $(hosts | wc -l) hosts, each reaching exactly the hosts of its networks"
  shape client 2mbit
  local port=5999 rc=0
  # the receiver measures: the sender's count includes its socket buffers
  ip netns exec $PREFIX-client python3 -c "
import socket, time
time.sleep(0.3)
s = socket.create_connection(('$(addr_of edge1 access)', $port))
data = b'x' * 16384; t0 = time.monotonic()
while time.monotonic() - t0 < 4: s.sendall(data)
s.close()
" &
  local src=$!
  ip netns exec $PREFIX-edge1 python3 -c "
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
  counters) counters ;;
  selfcheck) selfcheck ;;
  down) down ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
