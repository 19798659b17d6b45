#!/usr/bin/env bash
# What card security costs: the closed loop (64 x 1) and the pipelined load
# (16 x 16) through simulator and switch as separate processes on loopback,
# once without card security and once with a PIN in every 0100/0200 and a
# MAC on every transaction message both ways (terminal -> switch: the MAC
# checked, DE52 translated from the TPK to the ZPK; switch -> host: MACed
# under the ZAK, checked by the host, which decrypts the PIN; the answers
# MACed and checked back to the load generator), alternating, ROUNDS
# times. Prints each run, the medians and the secured share of plain, and
# the switch's own CPU per transaction (from /proc, user + system, over
# the load generator's run including its warmup): the simulator and the
# load generator share these cores and make four of the eight MACs, so
# the throughput share understates what a switch on its own box pays.
#
# STORE=off turns the transaction store (on by default) off in both
# configs: its exporter's CPU per transaction is the same with and without
# card security, so with it on the share reads higher.
#
# MAC_ALG=aes-cmac makes the TAK and ZAK AES-128 keys and every MAC an
# AES-CMAC (default: retail, ISO 9797-1 algorithm 3 under TDES keys).
#
#   bash loadtest/security-bench.sh
#   ROUNDS=5 DURATION=10s MAC_ALG=aes-cmac bash loadtest/security-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-loadtest/results/security}
SIM_PORT=${SIM_PORT:-19783}
SWITCH_PORT=${SWITCH_PORT:-18783}
ADMIN_PORT=${ADMIN_PORT:-19290}
MAC_ALG=${MAC_ALG:-retail}
rm -rf "$OUT"
mkdir -p "$OUT"
# One invocation: built apart, the two packages resolve the protocol
# crate's features differently and each run rebuilt both binaries.
cargo build --release --quiet -p switchyard -p loadtest --bins
BIN=target/release

# Test keys (public: a benchmark's, never a deployment's). Each is
# imported as two components, the key XOR a mask and the mask.
TPK=0123456789ABCDEFFEDCBA9876543210
TAK=89ABCDEF0123456776543210FEDCBA98
ZPK=1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D
ZAK=4C4C4C4C4C4C4C4C5D5D5D5D5D5D5D5D
MASK=5555555555555555AAAAAAAAAAAAAAAA
keys="$OUT/keys"
mkdir -p "$keys"
python3 -c 'import os; print(os.urandom(32).hex())' > "$keys/c1"
python3 -c 'import os; print(os.urandom(32).hex())' > "$keys/c2"
export SWITCHYARD_LMK_FILE="$keys/lmk"
"$BIN/switchyard" keys form-lmk --out "$keys/lmk" --component-file "$keys/c1" --component-file "$keys/c2" \
    --store "$keys/keys.toml" >/dev/null
import_key() { # name type hex [algorithm]
    python3 -c 'import sys; print("%032X" % (int(sys.argv[1],16) ^ int(sys.argv[2],16)))' "$3" "$MASK" > "$keys/k1"
    echo "$MASK" > "$keys/k2"
    "$BIN/switchyard" keys import --store "$keys/keys.toml" --name "$1" --type "$2" \
        --algorithm "${4:-tdes}" --component-file "$keys/k1" --component-file "$keys/k2" >/dev/null
}
mac_key_alg=tdes
[ "$MAC_ALG" = aes-cmac ] && mac_key_alg=aes
import_key term.tpk tpk "$TPK"
import_key term.tak tak "$TAK" "$mac_key_alg"
import_key acq.zpk zpk "$ZPK"
import_key acq.zak zak "$ZAK" "$mac_key_alg"
rm -f "$keys/k1" "$keys/k2" "$keys/c1" "$keys/c2"
printf 'pin_key = "%s"\nmac_key = "%s"\nmac_algorithm = "%s"\npin = "1234"\n' "$TPK" "$TAK" "$MAC_ALG" > "$keys/terminal.toml"

write_config() { # plain|secure -> config file
    local file="$OUT/switch-$1.toml"
    sed -e "s/^listen = \"127.0.0.1:8583\"/listen = \"127.0.0.1:$SWITCH_PORT\"/" \
        -e "s/^listen = \"127.0.0.1:9090\"/listen = \"127.0.0.1:$ADMIN_PORT\"/" \
        -e "s/^links = \[\"127.0.0.1:9583\"\]/links = [\"127.0.0.1:$SIM_PORT\"]/" \
        -e "s/^durability = .*/durability = \"none\"/" \
        -e "s|^dir = \"journal\"|dir = \"$OUT/journal\"|" \
        config/switchyard.toml > "$file"
    if [ "${STORE:-on}" = off ]; then
        printf '\n[store]\nenabled = false\n' >> "$file"
    fi
    if [ "$1" = secure ]; then
        # [acquirers.security] after [[acquirers]] belongs to the last one.
        cat >> "$file" <<TOML

[acquirers.security]
mac = "require"
mac_algorithm = "$MAC_ALG"
mac_key = "acq.zak"
pin_key = "acq.zpk"

[security]
key_store = "$keys/keys.toml"
lmk_file = "$keys/lmk"

[[security.terminals]]
terminal_id_prefixes = ["LT"]
mac = "require"
mac_algorithm = "$MAC_ALG"
mac_key = "term.tak"
pin_key = "term.tpk"
TOML
    fi
}
write_config plain
write_config secure
"$BIN/switchyard" check-config "$OUT/switch-secure.toml" >/dev/null 2>&1 || "$BIN/switchyard" check-config "$OUT/switch-secure.toml"

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
    echo "security-bench.sh: gave up waiting for: $*" >&2
    return 1
}

start() { # plain|secure
    local zone=()
    # Another process on the port (a simulator a killed run left behind)
    # would take this run's load with its own keys: refuse, naming it.
    for port in "$SIM_PORT" "$SWITCH_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "security-bench.sh: port $port is in use (a process left from another run?); stop it or set SIM_PORT/SWITCH_PORT" >&2
            exit 1
        fi
    done
    if [ "$1" = secure ]; then
        zone=(--keys "$keys/keys.toml" --lmk-file "$keys/lmk" --zak acq.zak --mac-algorithm "$MAC_ALG" --zpk acq.zpk --expect-pin 1234)
    fi
    "$BIN/switchyard" sim --listen "127.0.0.1:$SIM_PORT" "${zone[@]}" >/dev/null 2>&1 &
    pids+=($!)
    wait_until bash -c "exec 3<>/dev/tcp/127.0.0.1/$SIM_PORT"
    # The store (on by default) lives in data/ beside the journal: a store
    # left from the last run is ahead of the new, empty journal and the
    # switch refuses to start.
    rm -rf "$OUT/journal" "$OUT/data"
    "$BIN/switchyard" run --config "$OUT/switch-$1.toml" >"$OUT/switch-$1.log" 2>&1 &
    pids+=($!)
    wait_until curl -sf "http://127.0.0.1:$ADMIN_PORT/ready"
}

# The switch's CPU so far, in clock ticks (utime + stime of /proc/PID/stat).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run() { # plain|secure name loadtest-flags...: prints the answered rate
    local mode=$1 name=$2; shift 2
    # `run` is a pipeline's subshell: its processes are its own to stop,
    # also when it stops early.
    trap cleanup EXIT
    local secured=()
    if [ "$mode" = secure ]; then secured=(--pin --mac --terminal-keys "$keys/terminal.toml"); fi
    start "$mode"
    local switch_pid=${pids[-1]} before after
    before=$(cpu_ticks "$switch_pid")
    "$BIN/loadtest" --target "127.0.0.1:$SWITCH_PORT" --duration "$DURATION" --warmup 1s \
        --no-progress --json "$OUT/$name.json" "${secured[@]}" "$@" >"$OUT/$name.txt" || {
        echo "security-bench.sh: $name not clean:" >&2; tail -3 "$OUT/$name.txt" >&2
        # A run of refusals measures nothing: it is left out of the
        # medians, and the script fails at the end.
        echo "$name: NOT CLEAN"
        cleanup
        return 0; }
    after=$(cpu_ticks "$switch_pid")
    cleanup
    python3 - "$OUT/$name.json" "$name" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
txns = r['answered'] + r['warmup']['answered']
us = int(sys.argv[3]) / int(sys.argv[4]) * 1e6 / max(txns, 1)
print(f"{sys.argv[2]}: {r['achieved_rate']:.0f}/s answered, switch CPU {us:.1f} us/txn", flush=True)
PY
}

: >"$OUT/rates.txt"
for k in $(seq 1 "$ROUNDS"); do
    for shape in "closed-64x1 --connections 64 --in-flight 1 --threads 1" \
                 "pipelined-16x16 --connections 16 --in-flight 16"; do
        set -- $shape
        name=$1; shift
        for mode in plain secure; do
            run "$mode" "$name-$mode-$k" "$@" | tee -a "$OUT/rates.txt"
        done
    done
done

python3 - "$OUT/rates.txt" <<'PY'
import re, statistics, sys
rates, cpu = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)-(plain|secure)-\d+: (\d+)/s answered, switch CPU ([0-9.]+) us", line)
    if m:
        rates.setdefault((m.group(1), m.group(2)), []).append(float(m.group(3)))
        cpu.setdefault((m.group(1), m.group(2)), []).append(float(m.group(4)))
print("\n| load | plain (median/s) | PIN + MAC both ways (median/s) | share of plain "
      "| switch CPU/txn plain | secured | plain's share of secured |")
print("|---|---|---|---|---|---|---|")
for shape in ("closed-64x1", "pipelined-16x16"):
    p = statistics.median(rates.get((shape, "plain"), [0]))
    s = statistics.median(rates.get((shape, "secure"), [0]))
    cp = statistics.median(cpu.get((shape, "plain"), [0]))
    cs = statistics.median(cpu.get((shape, "secure"), [0]))
    print(f"| {shape} | {p:,.0f} | {s:,.0f} | {s / p if p else 0:.2f} "
          f"| {cp:.1f} us | {cs:.1f} us | {cp / cs if cs else 0:.2f} |")
unclean = [l.split(":")[0] for l in open(sys.argv[1]) if l.rstrip().endswith("NOT CLEAN")]
if unclean:
    print(f"\nNOT CLEAN: {', '.join(unclean)} (left out of the medians; see their .txt files)")
    sys.exit(1)
PY
