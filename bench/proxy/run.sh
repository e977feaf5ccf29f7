#!/usr/bin/env bash
# DESIGN.md section 3, proxy targets: a Lanyard originate+terminate pair against stunnel4 and
# HAProxy pairs doing the same mTLS hop, and against direct TCP, all on 127.0.0.1 in one run.
#
#   bench/proxy/run.sh            # from the repository root; prints the results table
#
# Needs: stunnel4 haproxy iperf3 sockperf openssl curl taskset (Debian:
#   apt-get install -y stunnel4 haproxy iperf3 sockperf openssl curl util-linux iproute2).
# Knobs (environment): ROUNDS (3) interleaved rounds per measurement, SECS (10) seconds per
# iperf3/sockperf run, HS_SECS (10) seconds per handshake run, IDLE_CONNS (1000),
# NO_BUILD=1 to use target/release as it is, KEEP=1 to keep the work directory,
# PROXY_BIN=path to run another lanyard-proxy build (e.g. a saved baseline) as the Lanyard pair,
# PHASES ("throughput latency memory handshakes") to run only some measurements,
# PROFILE=DIR to also profile the Lanyard pair under one more iperf3 run (SECS long): perf
# stat (syscalls, context switches, CPU time) and perf record -g of both proxies, reports in DIR,
# PRIORITY=1 on a shared machine: everything runs at nice -10, and the latency phase's
# processes (sockperf, both ends of every pair) under SCHED_FIFO 10, back to normal after it
# (sockperf ping-pong and the proxies block between messages: nothing spins at that priority).
#
# What runs: a real lanyard-server and lanyard-agent; two lanyard-proxy processes (copies of
# the binary, so the agent's unix:path selectors give them different SVIDs); the same SVIDs
# fetched with `lanyard-agent api fetch x509 --write` (from copies of the agent binary beside
# each proxy copy, selected by the same entries) for the stunnel and HAProxy pairs. Every
# pair: TLS 1.3 only, TLS_AES_256_GCM_SHA384, X25519 key exchange, P-256 SVIDs, client
# certificates required and verified against the trust bundle, no session resumption.
# Every load is bounded in time and count, and every process is one this script started.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
HS_SECS=${HS_SECS:-10}
IDLE_CONNS=${IDLE_CONNS:-1000}
PHASES=" ${PHASES:-throughput latency memory handshakes} "
PROFILE=${PROFILE:-}
phase() { [[ $PHASES == *" $1 "* ]]; }
TD=example.org
WEB_ID=spiffe://$TD/bench/web
CLIENT_ID=spiffe://$TD/bench/client
SUITE=TLS_AES_256_GCM_SHA384
GROUP=X25519
DEADLINE=30 # seconds any startup step may take

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release

for tool in stunnel4 haproxy iperf3 sockperf openssl curl taskset ss; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install -y stunnel4 haproxy iperf3 sockperf openssl curl util-linux iproute2" >&2
        exit 1
    }
done
if [[ ${NO_BUILD:-} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p lanyard-server -p lanyard-agent -p lanyard-proxy \
        -p lanyard-bench --bins) >&2
fi
BENCH=$BIN/lanyard-bench
if [[ ${PRIORITY:-} == 1 ]]; then
    command -v chrt >/dev/null || { echo "PRIORITY=1 needs chrt (util-linux)" >&2; exit 1; }
    renice -n -10 -p $$ >/dev/null
fi

WORK=$(mktemp -d /tmp/lanyard-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${KEEP:-} == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log() { echo "# $*" >&2; }

# start NAME CMD...: runs CMD in the background, output in $WORK/NAME.out; sets LAST_PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# announced NAME ROLE: waits for `listening on ADDR (ROLE)` in NAME's output; prints ADDR.
announced() {
    local file=$WORK/$1.out role=$2 i addr
    for ((i = 0; i < DEADLINE * 10; i++)); do
        addr=$(sed -n "s/^listening on \(.*\) ($role)\$/\1/p" "$file" 2>/dev/null | head -1)
        if [[ -n $addr ]]; then
            echo "$addr"
            return
        fi
        sleep 0.1
    done
    echo "$1 announced no $role listener in ${DEADLINE}s:" >&2
    cat "$file" >&2
    exit 1
}

# listening PORT: waits until something listens on PORT (without connecting to it).
listening() {
    local i
    for ((i = 0; i < DEADLINE * 10; i++)); do
        if [[ -n $(ss -Hltn "sport = :$1") ]]; then return; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after ${DEADLINE}s" >&2
    exit 1
}

# ready METRICS_ADDR: waits until a proxy's /readyz says it holds an SVID.
ready() {
    local i
    for ((i = 0; i < DEADLINE * 10; i++)); do
        if curl -fs "http://$1/readyz" >/dev/null; then return; fi
        sleep 0.1
    done
    echo "proxy at $1 not ready after ${DEADLINE}s" >&2
    exit 1
}

rss() { "$BENCH" rss "$1"; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# ---------------------------------------------------------------- identity: server + agent
for side in web client; do
    mkdir -p "$WORK/$side"
    cp "${PROXY_BIN:-$BIN/lanyard-proxy}" "$WORK/$side/lanyard-proxy"
    cp "$BIN/lanyard-agent" "$WORK/$side/lanyard-agent"
done
cat >"$WORK/server.toml" <<EOF
[[entries]]
spiffe_id = "$WEB_ID"
selectors = ["unix:path:$WORK/web/lanyard-proxy"]
nodes = ["bench"]

[[entries]]
spiffe_id = "$WEB_ID"
selectors = ["unix:path:$WORK/web/lanyard-agent"]
nodes = ["bench"]

[[entries]]
spiffe_id = "$CLIENT_ID"
selectors = ["unix:path:$WORK/client/lanyard-proxy"]
nodes = ["bench"]

[[entries]]
spiffe_id = "$CLIENT_ID"
selectors = ["unix:path:$WORK/client/lanyard-agent"]
nodes = ["bench"]
EOF
export LANYARD_LOG=warn
start server "$BIN/lanyard-server" run --trust-domain "$TD" --listen 127.0.0.1:0 \
    --data-dir "$WORK/server" --config "$WORK/server.toml"
SERVER_ADDR=$(announced server grpc)
TOKEN=$("$BIN/lanyard-server" token generate --data-dir "$WORK/server" --node bench)
"$BIN/lanyard-server" bundle show --data-dir "$WORK/server" >"$WORK/root.pem"
SOCKET=$WORK/agent.sock
start agent "$BIN/lanyard-agent" run --server "$SERVER_ADDR" --trust-bundle "$WORK/root.pem" \
    --join-token "$TOKEN" --socket "$SOCKET" --data-dir "$WORK/agent"
announced agent workload-api >/dev/null

# The stunnel and HAProxy pairs use the SVIDs the agent serves to each side.
for side in web client; do
    "$WORK/$side/lanyard-agent" api fetch x509 --socket "$SOCKET" --write "$WORK/certs/$side" >/dev/null
    # HAProxy wants certificate chain and key in one file.
    (umask 077 && cat "$WORK/certs/$side/svid.pem" "$WORK/certs/$side/svid.key" >"$WORK/certs/$side/haproxy.pem")
    log "$side SVID: $(openssl x509 -in "$WORK/certs/$side/svid.pem" -noout -ext subjectAltName | tail -1 | xargs)," \
        "$(openssl x509 -in "$WORK/certs/$side/svid.pem" -noout -text | grep -m1 'ASN1 OID' | xargs)," \
        "chain of $(grep -c 'BEGIN CERTIFICATE' "$WORK/certs/$side/svid.pem")"
done

# ---------------------------------------------------------------- targets
read -r -d '' -a P < <("$BENCH" free-ports 24 && printf '\0')
IPERF=${P[0]} SOCKPERF=${P[1]}
start iperf3-server iperf3 -s -B 127.0.0.1 -p "$IPERF"
start sockperf-server sockperf sr --tcp -i 127.0.0.1 -p "$SOCKPERF"
SOCKPERF_SERVER=$LAST_PID
start echo "$BENCH" echo --listen 127.0.0.1:0
ECHO=$(announced echo echo)

# Routes per pair: 0 iperf3, 1 sockperf, 2 echo. Ports: originate side, terminate side.
TARGETS=("127.0.0.1:$IPERF" "127.0.0.1:$SOCKPERF" "$ECHO")
L_OUT=("${P[@]:2:3}") L_IN=("${P[@]:5:3}")
S_OUT=("${P[@]:8:3}") S_IN=("${P[@]:11:3}")
H_OUT=("${P[@]:14:3}") H_IN=("${P[@]:17:3}")
HS_PORT=${P[20]}

# ---------------------------------------------------------------- Lanyard pair
args=()
for i in 0 1 2; do args+=(--inbound "127.0.0.1:${L_IN[$i]}=${TARGETS[$i]}"); done
start lanyard-web "$WORK/web/lanyard-proxy" run --workload-socket "$SOCKET" "${args[@]}" \
    --admin 127.0.0.1:0 --metrics 127.0.0.1:0
LANYARD_WEB=$LAST_PID
args=()
for i in 0 1 2; do args+=(--outbound "127.0.0.1:${L_OUT[$i]}=127.0.0.1:${L_IN[$i]},id=$WEB_ID"); done
start lanyard-client "$WORK/client/lanyard-proxy" run --workload-socket "$SOCKET" "${args[@]}" \
    --admin 127.0.0.1:0 --metrics 127.0.0.1:0
LANYARD_CLIENT=$LAST_PID
ready "$(announced lanyard-web metrics)"
ready "$(announced lanyard-client metrics)"
IDLE_RSS_WEB=$(rss "$LANYARD_WEB")
IDLE_RSS_CLIENT=$(rss "$LANYARD_CLIENT")

# ---------------------------------------------------------------- stunnel pair
stunnel_conf() { # SIDE(client|server) PORTS_ACCEPT PORTS_CONNECT CERTDIR
    local side=$1 certs=$4 i
    local -a accept=($2) connect=($3)
    echo "foreground = yes"
    echo "pid ="
    echo "debug = 3"
    echo "syslog = no"
    for i in 0 1 2; do
        cat <<EOF
[r$i]
client = $([[ $side == client ]] && echo yes || echo no)
accept = 127.0.0.1:${accept[$i]}
connect = ${connect[$i]}
cert = $certs/svid.pem
key = $certs/svid.key
CAfile = $certs/bundle.pem
verifyChain = yes
sslVersionMin = TLSv1.3
ciphersuites = $SUITE
curves = $GROUP
options = NO_TICKET
sessionResume = no
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
    done
}
stunnel_conf server "${S_IN[*]}" "${TARGETS[*]}" "$WORK/certs/web" >"$WORK/stunnel-server.conf"
stunnel_conf client "${S_OUT[*]}" "127.0.0.1:${S_IN[0]} 127.0.0.1:${S_IN[1]} 127.0.0.1:${S_IN[2]}" \
    "$WORK/certs/client" >"$WORK/stunnel-client.conf"
start stunnel-server stunnel4 "$WORK/stunnel-server.conf"
STUNNEL_SERVER=$LAST_PID
start stunnel-client stunnel4 "$WORK/stunnel-client.conf"
STUNNEL_CLIENT=$LAST_PID

# ---------------------------------------------------------------- HAProxy pair
haproxy_conf() { # SIDE PORTS_ACCEPT PORTS_CONNECT CERTDIR
    local side=$1 certs=$4 i
    local -a accept=($2) connect=($3)
    cat <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
EOF
    local tls="ssl-min-ver TLSv1.3 ciphersuites $SUITE ca-file $certs/bundle.pem verify required"
    for i in 0 1 2; do
        if [[ $side == server ]]; then
            echo "listen r$i"
            echo "    bind 127.0.0.1:${accept[$i]} ssl crt $certs/haproxy.pem $tls curves $GROUP no-tls-tickets"
            echo "    server app ${connect[$i]}"
        else
            echo "listen r$i"
            echo "    bind 127.0.0.1:${accept[$i]}"
            echo "    server peer ${connect[$i]} ssl crt $certs/haproxy.pem $tls no-ssl-reuse"
        fi
    done
}
haproxy_conf server "${H_IN[*]}" "${TARGETS[*]}" "$WORK/certs/web" >"$WORK/haproxy-server.cfg"
haproxy_conf client "${H_OUT[*]}" "127.0.0.1:${H_IN[0]} 127.0.0.1:${H_IN[1]} 127.0.0.1:${H_IN[2]}" \
    "$WORK/certs/client" >"$WORK/haproxy-client.cfg"
start haproxy-server haproxy -db -f "$WORK/haproxy-server.cfg"
HAPROXY_SERVER=$LAST_PID
start haproxy-client haproxy -db -f "$WORK/haproxy-client.cfg"
HAPROXY_CLIENT=$LAST_PID

for port in "$IPERF" "$SOCKPERF" "${S_OUT[@]}" "${S_IN[@]}" "${H_OUT[@]}" "${H_IN[@]}"; do
    listening "$port"
done
sleep 1 # let every proxy finish starting before its idle RSS is read
declare -A IDLE_RSS=(
    [lanyard/client]=$IDLE_RSS_CLIENT [lanyard/server]=$IDLE_RSS_WEB
    [stunnel/client]=$(rss "$STUNNEL_CLIENT") [stunnel/server]=$(rss "$STUNNEL_SERVER")
    [haproxy/client]=$(rss "$HAPROXY_CLIENT") [haproxy/server]=$(rss "$HAPROXY_SERVER")
)

# ---------------------------------------------------------------- the hop, checked
# What each terminating side negotiates with an OpenSSL client offering its defaults, and
# that each refuses a client without a certificate (no echo comes back).
log "negotiated on each terminating side (echo route):"
for pair in lanyard:${L_IN[2]} stunnel:${S_IN[2]} haproxy:${H_IN[2]}; do
    name=${pair%%:*} port=${pair#*:}
    got=$( (echo ping; sleep 1) | timeout 5 openssl s_client -connect "127.0.0.1:$port" -alpn lanyard/1 -noservername \
        -cert "$WORK/certs/client/svid.pem" -cert_chain "$WORK/certs/client/svid.pem" \
        -key "$WORK/certs/client/svid.key" -CAfile "$WORK/certs/client/bundle.pem" -brief 2>&1 || true)
    log "  $name: $(echo "$got" | grep -E 'Protocol version|Ciphersuite|Server Temp Key|Verification' | xargs)"
    echo "$got" | grep -q '^ping$' || { echo "$name: no echo through an mTLS connection:" >&2; echo "$got" >&2; exit 1; }
    nocert=$( (echo ping; sleep 1) | timeout 5 openssl s_client -connect "127.0.0.1:$port" -alpn lanyard/1 -noservername -quiet 2>&1 || true)
    if echo "$nocert" | grep -q '^ping$'; then echo "$name accepted a client without a certificate" >&2; exit 1; fi
done
# Every route carries data end to end before anything is timed.
for port in "${L_OUT[2]}" "${S_OUT[2]}" "${H_OUT[2]}"; do
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    echo hello >&3
    read -r -t 5 reply <&3 || true
    exec 3>&-
    [[ $reply == hello ]] || { echo "no echo through 127.0.0.1:$port" >&2; exit 1; }
done

declare -A ROUTE_IPERF=([direct]=$IPERF [lanyard]=${L_OUT[0]} [stunnel]=${S_OUT[0]} [haproxy]=${H_OUT[0]})
declare -A ROUTE_SOCKPERF=([direct]=$SOCKPERF [lanyard]=${L_OUT[1]} [stunnel]=${S_OUT[1]} [haproxy]=${H_OUT[1]})
PAIRS=(direct lanyard stunnel haproxy)

# ---------------------------------------------------------------- throughput
declare -A GBPS
phase throughput || ROUNDS_T=0
for ((r = 1; r <= ${ROUNDS_T:-$ROUNDS}; r++)); do
    for pair in "${PAIRS[@]}"; do
        out=$(iperf3 -c 127.0.0.1 -p "${ROUTE_IPERF[$pair]}" -P 1 -t "$SECS" -f m)
        mbps=$(echo "$out" | awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1)}')
        [[ -n $mbps ]] || { echo "iperf3 through $pair printed no result:" >&2; echo "$out" >&2; exit 1; }
        GBPS[$pair]+="$(awk -v m="$mbps" 'BEGIN {printf "%.2f", m / 1000}') "
        log "round $r throughput $pair: $mbps Mbit/s"
    done
done

# ---------------------------------------------------------------- profile
# The Lanyard pair under one more iperf3 run: syscalls, context switches and CPU of both
# proxies (perf stat), and where their time goes (perf record -g, report by symbol).
if [[ -n $PROFILE ]]; then
    mkdir -p "$PROFILE"
    perf stat -e raw_syscalls:sys_enter,context-switches,task-clock -p "$LANYARD_CLIENT,$LANYARD_WEB" \
        -o "$PROFILE/stat.txt" -- sleep "$SECS" &
    STAT_PID=$!
    perf record -g -F 499 -p "$LANYARD_CLIENT,$LANYARD_WEB" -o "$PROFILE/perf.data" -- sleep "$SECS" \
        >"$PROFILE/record.log" 2>&1 &
    RECORD_PID=$!
    out=$(iperf3 -c 127.0.0.1 -p "${ROUTE_IPERF[lanyard]}" -P 1 -t "$SECS" -f m)
    wait "$STAT_PID" "$RECORD_PID"
    mbps=$(echo "$out" | awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1)}')
    syscalls=$(awk '/raw_syscalls:sys_enter/ {gsub(",", "", $1); print $1}' "$PROFILE/stat.txt")
    perf report -i "$PROFILE/perf.data" --no-children --sort dso,sym --stdio -g none \
        >"$PROFILE/report.txt" 2>/dev/null || true
    perf report -i "$PROFILE/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' >"$PROFILE/dso.txt" || true
    # Which syscalls, from a separate short run (tracing every syscall slows the proxies).
    perf trace -s -p "$LANYARD_CLIENT,$LANYARD_WEB" -o "$PROFILE/syscalls.txt" -- sleep 3 2>/dev/null &
    TRACE_PID=$!
    iperf3 -c 127.0.0.1 -p "${ROUTE_IPERF[lanyard]}" -P 1 -t 3 >/dev/null
    wait "$TRACE_PID" || true
    # The same for ping-pong: syscalls per message (sockperf prints how many it sent).
    perf trace -s -p "$LANYARD_CLIENT,$LANYARD_WEB" -o "$PROFILE/syscalls-pingpong.txt" -- sleep 3 2>/dev/null &
    TRACE_PID=$!
    sockperf pp --tcp -i 127.0.0.1 -p "${ROUTE_SOCKPERF[lanyard]}" -t 2 -m 64 >"$PROFILE/sockperf.txt" 2>&1
    wait "$TRACE_PID" || true
    log "profile (lanyard pair, iperf3 $mbps Mbit/s): $syscalls syscalls in ${SECS}s over both proxies," \
        "$(awk -v m="$mbps" -v n="$syscalls" -v s="$SECS" 'BEGIN {printf "%.0f bytes of stream per syscall", m * 1e6 / 8 * s / n}')"
    log "  $(grep -E 'context-switches|task-clock' "$PROFILE/stat.txt" | xargs)"
    log "  by DSO: $(xargs <"$PROFILE/dso.txt")"
    log "  reports in $PROFILE (report.txt, dso.txt, stat.txt)"
fi

# ---------------------------------------------------------------- latency
declare -A P50 P99
phase latency || ROUNDS_L=0
ON_PATH=("$SOCKPERF_SERVER" "$LANYARD_CLIENT" "$LANYARD_WEB" "$STUNNEL_CLIENT" "$STUNNEL_SERVER"
    "$HAPROXY_CLIENT" "$HAPROXY_SERVER")
RT=()
if [[ ${PRIORITY:-} == 1 ]]; then
    for pid in "${ON_PATH[@]}"; do chrt -f -a -p 10 "$pid" >/dev/null; done
    RT=(chrt -f 10)
fi
for ((r = 1; r <= ${ROUNDS_L:-$ROUNDS}; r++)); do
    for pair in "${PAIRS[@]}"; do
        out=$("${RT[@]}" sockperf pp --tcp -i 127.0.0.1 -p "${ROUTE_SOCKPERF[$pair]}" -t "$SECS" -m 64 --full-rtt 2>&1)
        p50=$(echo "$out" | awk '/percentile 50.000 =/ {print $NF}')
        p99=$(echo "$out" | awk '/percentile 99.000 =/ {print $NF}')
        [[ -n $p50 && -n $p99 ]] || { echo "sockperf through $pair printed no percentiles:" >&2; echo "$out" >&2; exit 1; }
        P50[$pair]+="$p50 "
        P99[$pair]+="$p99 "
        log "round $r RTT $pair: p50 $p50 us, p99 $p99 us"
    done
done
if [[ ${PRIORITY:-} == 1 ]]; then
    for pid in "${ON_PATH[@]}"; do chrt -o -a -p 0 "$pid" >/dev/null; done
fi

# ---------------------------------------------------------------- memory per idle connection
# Three cycles of open 1,000 / measure / close: the first gives the per-connection figure, the
# later ones whether the memory of closed connections is reused (growth stops) or lost.
declare -A PER_CONN REUSE
idle() { # NAME PORT CLIENT_PID SERVER_PID
    local out side pid
    out=$(taskset -c 0 "$BENCH" idle --connect "127.0.0.1:$2" --count "$IDLE_CONNS" --cycles 3 --pids "$3,$4")
    for side in client:$3 server:$4; do
        pid=${side#*:}
        PER_CONN[$1/${side%%:*}]=$(echo "$out" | sed -n "s/^cycle=1 pid=$pid .*per_conn_bytes=//p")
        REUSE[$1/${side%%:*}]=$(echo "$out" | awk -v pid="pid=$pid" '$2 == pid {
            for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            printf "%s%s/%s/%s", sep, v["rss_before_kib"], v["rss_open_kib"], v["rss_closed_kib"]; sep = " -> " }')
    done
    log "idle $1:"
    echo "$out" | sed 's/^/#   /' >&2
}
if phase memory; then
    idle lanyard "${L_OUT[2]}" "$LANYARD_CLIENT" "$LANYARD_WEB"
    idle stunnel "${S_OUT[2]}" "$STUNNEL_CLIENT" "$STUNNEL_SERVER"
    idle haproxy "${H_OUT[2]}" "$HAPROXY_CLIENT" "$HAPROXY_SERVER"
fi
AFTER_RSS_WEB=$(rss "$LANYARD_WEB")
AFTER_RSS_CLIENT=$(rss "$LANYARD_CLIENT")

# ---------------------------------------------------------------- handshakes per core
# Servers pinned to core 1, the load generator and the proxy's echo target to core 0.
phase handshakes || ROUNDS_H=0
if phase handshakes; then
start hs-echo taskset -c 0 "$BENCH" echo --listen 127.0.0.1:0
HS_ECHO=$(announced hs-echo echo)
start hs-lanyard taskset -c 1 "$WORK/web/lanyard-proxy" run --workload-socket "$SOCKET" \
    --inbound "127.0.0.1:$HS_PORT=$HS_ECHO" --admin 127.0.0.1:0 --metrics 127.0.0.1:0
HS_LANYARD=$LAST_PID
ready "$(announced hs-lanyard metrics)"
start hs-webpki taskset -c 1 "$BENCH" tls-echo --svid-dir "$WORK/certs/web" --verifier webpki
HS_WEBPKI=$LAST_PID
HS_WEBPKI_ADDR=$(announced hs-webpki tls-echo)
start hs-verifier taskset -c 1 "$BENCH" tls-echo --svid-dir "$WORK/certs/web" --verifier lanyard
HS_VERIFIER=$LAST_PID
HS_VERIFIER_ADDR=$(announced hs-verifier tls-echo)
declare -A HS_ADDR=([rustls]=$HS_WEBPKI_ADDR [rustls+spiffe]=$HS_VERIFIER_ADDR [lanyard]=127.0.0.1:$HS_PORT)
declare -A HS_PID=([rustls]=$HS_WEBPKI [rustls+spiffe]=$HS_VERIFIER [lanyard]=$HS_LANYARD)
fi
declare -A HS_RATE HS_PER_CORE
for ((r = 1; r <= ${ROUNDS_H:-$ROUNDS}; r++)); do
    for server in rustls rustls+spiffe lanyard; do
        out=$(taskset -c 0 "$BENCH" handshakes --connect "${HS_ADDR[$server]}" \
            --svid-dir "$WORK/certs/client" --seconds "$HS_SECS" --server-pid "${HS_PID[$server]}")
        HS_RATE[$server]+="$(echo "$out" | sed -n 's/.* rate=\([0-9.]*\).*/\1/p') "
        HS_PER_CORE[$server]+="$(echo "$out" | sed -n 's/.*per_core=\([0-9.]*\).*/\1/p') "
        log "round $r handshakes $server: $out"
    done
done

# ---------------------------------------------------------------- report
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a - b}'; }

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(uname -sr)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: $(stunnel4 -version 2>&1 | grep -m1 '^stunnel'), HAProxy $(haproxy -v | head -1 | awk '{print $3}')," \
    "iperf3 $(iperf3 --version | head -1 | awk '{print $2}'), sockperf $(sockperf --version 2>&1 | grep -om1 '[0-9][0-9.]*' | head -1)," \
    "$(openssl version | awk '{print $1, $2}')"
echo "medians of $ROUNDS interleaved rounds; iperf3 -t $SECS one stream; sockperf pp 64 B, 1 in flight, -t $SECS, full RTT"
echo "PRIORITY=${PRIORITY:-0} (1: nice -10 throughout, SCHED_FIFO 10 for the latency phase)"
echo

if phase throughput && phase latency; then
declare -A T L50 L99
for pair in "${PAIRS[@]}"; do
    T[$pair]=$(med "${GBPS[$pair]}")
    L50[$pair]=$(med "${P50[$pair]}")
    L99[$pair]=$(med "${P99[$pair]}")
done
best_t=$(printf '%s\n' "${T[stunnel]}" "${T[haproxy]}" | sort -g | tail -1)
best_a50=$(printf '%s\n' "$(sub "${L50[stunnel]}" "${L50[direct]}")" "$(sub "${L50[haproxy]}" "${L50[direct]}")" | sort -g | head -1)
best_a99=$(printf '%s\n' "$(sub "${L99[stunnel]}" "${L99[direct]}")" "$(sub "${L99[haproxy]}" "${L99[direct]}")" | sort -g | head -1)

echo "| path | throughput Gbit/s | vs direct | vs best competitor | RTT p50 us | added p50 | vs best | RTT p99 us | added p99 | vs best |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for pair in "${PAIRS[@]}"; do
    a50=$(sub "${L50[$pair]}" "${L50[direct]}")
    a99=$(sub "${L99[$pair]}" "${L99[direct]}")
    if [[ $pair == direct ]]; then
        echo "| direct | ${T[$pair]} | 1.00 | | ${L50[$pair]} | | | ${L99[$pair]} | | |"
    else
        echo "| $pair pair | ${T[$pair]} | $(ratio "${T[$pair]}" "${T[direct]}") | $(ratio "${T[$pair]}" "$best_t") |" \
            "${L50[$pair]} | $a50 | $(ratio "$a50" "$best_a50") | ${L99[$pair]} | $a99 | $(ratio "$a99" "$best_a99") |"
    fi
done
echo
for pair in "${PAIRS[@]}"; do
    echo "rounds $pair: Gbit/s ${GBPS[$pair]}; p50 us ${P50[$pair]}; p99 us ${P99[$pair]}"
done
fi
if phase handshakes; then
echo
echo "| handshake server (pinned to 1 core) | handshakes/s (wall) | handshakes per CPU-second | vs rustls alone |"
echo "|---|---|---|---|"
hs_base=$(med "${HS_PER_CORE[rustls]}")
for server in rustls rustls+spiffe lanyard; do
    pc=$(med "${HS_PER_CORE[$server]}")
    echo "| $server | $(med "${HS_RATE[$server]}") | $pc | $(ratio "$pc" "$hs_base") |"
done
fi
echo
if ! phase memory; then for key in "${!IDLE_RSS[@]}"; do PER_CONN[$key]=-; REUSE[$key]=-; done; fi
echo "| proxy process | idle RSS KiB (ready, before traffic) | RSS growth per idle connection, bytes | RSS KiB before / $IDLE_CONNS open / closed, cycles 1 -> 2 -> 3 |"
echo "|---|---|---|---|"
for key in lanyard/client lanyard/server stunnel/client stunnel/server haproxy/client haproxy/server; do
    echo "| $key | ${IDLE_RSS[$key]} | ${PER_CONN[$key]} | ${REUSE[$key]} |"
done
echo
echo "lanyard RSS KiB after the whole run, idle again: client $AFTER_RSS_CLIENT, server $AFTER_RSS_WEB"
