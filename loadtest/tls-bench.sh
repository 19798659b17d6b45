#!/usr/bin/env bash
# What TLS costs: the closed loop (64 x 1) and the pipelined load (16 x 16)
# through simulator and switch as separate processes on loopback, once in
# plain TCP and once with TLS on both sides (terminals to switch, switch
# to simulator, client certificates required on both), alternating, ROUNDS
# times; then handshakes per second with --reconnect-every 1. Prints each
# run, the median of each, and TLS as a share of plain.
#
# Then, at a fixed open-loop rate (RATE, default 20000/s, 64 connections),
# the switch process's own CPU (user + system, from /proc) per answered
# request, plain and TLS: what TLS costs the switch itself, apart from
# what it costs the load generator and the simulator on the same cores.
#
#   bash loadtest/tls-bench.sh
#   ROUNDS=5 DURATION=10s RATE=30000 bash loadtest/tls-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-loadtest/results/tls}
mkdir -p "$OUT"
cargo build --release --quiet --bin switchyard -p switchyard
cargo build --release --quiet -p loadtest
BIN=target/release
SIM_PORT=${SIM_PORT:-19683}
SWITCH_PORT=${SWITCH_PORT:-18683}
ADMIN_PORT=${ADMIN_PORT:-19190}
RATE=${RATE:-20000}

certs="$OUT/certs"
rm -rf "$certs"
"$BIN/switchyard" certs --dir "$certs" >/dev/null

write_config() { # plain|tls -> config file
    local mode=$1 file="$OUT/switch-$1.toml"
    sed -e "s/^listen = \"127.0.0.1:8583\"/listen = \"127.0.0.1:$SWITCH_PORT\"/" \
        -e "s/^listen = \"127.0.0.1:9090\"/listen = \"127.0.0.1:$ADMIN_PORT\"/" \
        -e "s/^links = \[\"127.0.0.1:9583\"\]/links = [\"127.0.0.1:$SIM_PORT\"]/" \
        -e "s/^durability = .*/durability = \"none\"/" \
        -e "s|^dir = \"journal\"|dir = \"$OUT/journal\"|" \
        config/switchyard.toml > "$file"
    if [ "$mode" = tls ]; then
        # TOML tables can come in any order: these extend the ones above.
        cat >> "$file" <<TOML

[terminals.tls]
cert = "$certs/server.pem"
key = "$certs/server.key"
client_ca = "$certs/switchyard-ca.pem"

[acquirers.tls]
ca = "$certs/switchyard-ca.pem"
cert = "$certs/client.pem"
key = "$certs/client.key"
server_name = "localhost"
TOML
    fi
    echo "$file"
}
# [acquirers.tls] after [[acquirers]] belongs to the last acquirer table.
python3 - "$(write_config tls)" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
assert "tls" in c["terminals"] and "tls" in c["acquirers"][-1], "TLS tables not where meant"
PY
write_config plain >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
# Polls until a command succeeds (at most 10 s): the processes give no
# other readiness signal to a shell.
wait_until() {
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "tls-bench.sh: gave up waiting for: $*" >&2
    return 1
}

start() { # plain|tls
    local sim_tls=() 
    if [ "$1" = tls ]; then
        sim_tls=(--tls --cert "$certs/server.pem" --key "$certs/server.key" --client-ca "$certs/switchyard-ca.pem")
    fi
    "$BIN/switchyard" sim --listen "127.0.0.1:$SIM_PORT" "${sim_tls[@]}" >/dev/null 2>&1 &
    pids+=($!)
    wait_until bash -c "exec 3<>/dev/tcp/127.0.0.1/$SIM_PORT"
    rm -rf "$OUT/journal"
    "$BIN/switchyard" run --config "$OUT/switch-$1.toml" >"$OUT/switch-$1.log" 2>&1 &
    SWITCH_PID=$!
    pids+=($!)
    wait_until curl -sf "http://127.0.0.1:$ADMIN_PORT/health"
}

tls_flags() { # plain|tls
    if [ "$1" = tls ]; then
        echo --tls --ca "$certs/switchyard-ca.pem" --cert "$certs/client.pem" --key "$certs/client.key"
    fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu MODE NAME: prints the switch's CPU per answered request at RATE.
cpu() {
    local mode=$1 name=$2
    start "$mode"
    # The handshakes happen before the measured period: a 1 s warmup.
    local t0 t1
    "$BIN/loadtest" --target "127.0.0.1:$SWITCH_PORT" --connections 64 --rate "$RATE" \
        --duration 1s --warmup 0s --no-progress $(tls_flags "$mode") >/dev/null 2>&1 || true
    t0=$(cpu_ticks "$SWITCH_PID")
    "$BIN/loadtest" --target "127.0.0.1:$SWITCH_PORT" --connections 64 --rate "$RATE" \
        --duration "$DURATION" --warmup 0s --no-progress --json "$OUT/$name.json" \
        $(tls_flags "$mode") >"$OUT/$name.txt" 2>&1 || {
        echo "tls-bench.sh: $name not clean:" >&2; tail -3 "$OUT/$name.txt" >&2; }
    t1=$(cpu_ticks "$SWITCH_PID")
    cleanup
    python3 -c 'import json,os,sys; d=json.load(open(sys.argv[1])); n=d["answered"]; t=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf("SC_CLK_TCK"); print(f"{sys.argv[4]}: {t*1e6/max(n,1):.2f} us of switch CPU per request")' \
        "$OUT/$name.json" "$t0" "$t1" "$name"
}

# run MODE NAME loadtest-flags...: prints the answered rate.
run() {
    local mode=$1 name=$2; shift 2
    local tls=()
    read -r -a tls <<<"$(tls_flags "$mode")"
    start "$mode"
    "$BIN/loadtest" --target "127.0.0.1:$SWITCH_PORT" --duration "$DURATION" --warmup 1s \
        --no-progress --json "$OUT/$name.json" "${tls[@]}" "$@" >"$OUT/$name.txt" || {
        echo "tls-bench.sh: $name not clean:" >&2; tail -3 "$OUT/$name.txt" >&2; }
    cleanup
    python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rate = r.get("achieved_rate") or r.get("rate", {}).get("answered")
print(f"{sys.argv[2]}: {rate:.0f}/s answered", flush=True)
PY
}

: >"$OUT/rates.txt"
for k in $(seq 1 "$ROUNDS"); do
    for shape in "closed-64x1 --connections 64 --in-flight 1 --threads 1" \
                 "pipelined-16x16 --connections 16 --in-flight 16"; do
        set -- $shape
        name=$1; shift
        for mode in plain tls; do
            run "$mode" "$name-$mode-$k" "$@" | tee -a "$OUT/rates.txt"
        done
    done
done
for k in $(seq 1 "$ROUNDS"); do
    for mode in plain tls; do
        cpu "$mode" "cpu-$mode-$k" | tee -a "$OUT/rates.txt"
    done
done
run tls "handshakes-tls" --connections 16 --in-flight 1 --reconnect-every 1 | tee -a "$OUT/rates.txt"
run tls "handshakes-full-tls" --connections 16 --in-flight 1 --reconnect-every 1 --no-resume | tee -a "$OUT/rates.txt"
for h in handshakes-tls handshakes-full-tls; do echo "$h:"; grep -E "TLS " "$OUT/$h.txt" || true; done

python3 - "$OUT/rates.txt" <<'PY'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)-(plain|tls)-\d+: (\d+)/s", line)
    if m:
        rates.setdefault((m.group(1), m.group(2)), []).append(float(m.group(3)))
print("\n| load | plain (median/s) | TLS (median/s) | TLS share of plain |")
print("|---|---|---|---|")
for shape in ("closed-64x1", "pipelined-16x16"):
    p = statistics.median(rates.get((shape, "plain"), [0]))
    t = statistics.median(rates.get((shape, "tls"), [0]))
    print(f"| {shape} | {p:,.0f} | {t:,.0f} | {t / p if p else 0:.2f} |")
cpu = {}
for line in open(sys.argv[1]):
    m = re.match(r"cpu-(plain|tls)-\d+: ([\d.]+) us", line)
    if m:
        cpu.setdefault(m.group(1), []).append(float(m.group(2)))
if cpu:
    p, t = statistics.median(cpu.get("plain", [0])), statistics.median(cpu.get("tls", [0]))
    print(f"\nswitch CPU per request (median): plain {p:.2f} us, TLS {t:.2f} us: TLS x{t / p if p else 0:.2f}")
PY
