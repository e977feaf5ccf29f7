#!/bin/sh
# Lanyard's traffic redirection for one pod's network namespace: the ONE copy of these rules.
#
# `lanyard inject` runs this very text (embedded at build time) in the `lanyard-init` init
# container, and the proxy's network-namespace tests run this file, so what is tested is what
# is deployed. It needs NET_ADMIN and NET_RAW in the pod's network namespace, POSIX sh and
# iptables (legacy or nft backend). IPv4 only: IPv6 traffic is left alone (not meshed).
#
# Parameters (environment):
#   PROXY_UID             uid the proxy runs as; its own traffic is never redirected (2102)
#   PROXY_INBOUND_PORT    the proxy's --transparent-inbound port (4143)
#   PROXY_OUTBOUND_PORT   the proxy's --transparent-outbound port, on 127.0.0.1 (4140)
#   SKIP_INBOUND_PORTS    comma-separated destination ports never redirected inbound
#   SKIP_OUTBOUND_PORTS   comma-separated destination ports never redirected outbound
#   IPTABLES              the iptables command (tests substitute a recorder)
#
# What it does, in the nat table:
#   inbound:  every TCP connection arriving at the pod (PREROUTING) goes to PROXY_INBOUND_PORT,
#             except SKIP_INBOUND_PORTS; the proxy reads the original port (SO_ORIGINAL_DST).
#   outbound: every TCP connection the pod opens (OUTPUT) goes to 127.0.0.1:PROXY_OUTBOUND_PORT,
#             except the proxy's own (uid PROXY_UID: its upstream and app-side connections),
#             loopback (the app talking to itself or to the proxy) and SKIP_OUTBOUND_PORTS.
# Running it again replaces the rules instead of adding a second copy.
set -eu

PROXY_UID="${PROXY_UID:-2102}"
PROXY_INBOUND_PORT="${PROXY_INBOUND_PORT:-4143}"
PROXY_OUTBOUND_PORT="${PROXY_OUTBOUND_PORT:-4140}"
SKIP_INBOUND_PORTS="${SKIP_INBOUND_PORTS:-}"
SKIP_OUTBOUND_PORTS="${SKIP_OUTBOUND_PORTS:-}"
IPTABLES="${IPTABLES:-iptables}"

is_port() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
    esac
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

for value in "$PROXY_UID" "$PROXY_INBOUND_PORT" "$PROXY_OUTBOUND_PORT"; do
    case "$value" in
        '' | *[!0-9]*) echo "lanyard-redirect: not a number: '$value'" >&2; exit 2 ;;
    esac
done
for port in $(echo "$SKIP_INBOUND_PORTS,$SKIP_OUTBOUND_PORTS" | tr ',' ' '); do
    is_port "$port" || { echo "lanyard-redirect: not a port: '$port'" >&2; exit 2; }
done

nat() {
    echo "iptables -t nat $*"
    "$IPTABLES" -w -t nat "$@"
}

# Remove what an earlier run installed (each step may find nothing to remove).
"$IPTABLES" -w -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND 2>/dev/null || true
"$IPTABLES" -w -t nat -D OUTPUT -p tcp -j LANYARD_OUTBOUND 2>/dev/null || true
for chain in LANYARD_INBOUND LANYARD_OUTBOUND; do
    "$IPTABLES" -w -t nat -F "$chain" 2>/dev/null || true
    "$IPTABLES" -w -t nat -X "$chain" 2>/dev/null || true
done

# Inbound.
nat -N LANYARD_INBOUND
for port in $(echo "$SKIP_INBOUND_PORTS" | tr ',' ' '); do
    nat -A LANYARD_INBOUND -p tcp --dport "$port" -j RETURN
done
nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports "$PROXY_INBOUND_PORT"
nat -A PREROUTING -p tcp -j LANYARD_INBOUND

# Outbound.
nat -N LANYARD_OUTBOUND
nat -A LANYARD_OUTBOUND -m owner --uid-owner "$PROXY_UID" -j RETURN
nat -A LANYARD_OUTBOUND -o lo -j RETURN
nat -A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN
for port in $(echo "$SKIP_OUTBOUND_PORTS" | tr ',' ' '); do
    nat -A LANYARD_OUTBOUND -p tcp --dport "$port" -j RETURN
done
nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports "$PROXY_OUTBOUND_PORT"
nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND

echo "lanyard-redirect: done"
