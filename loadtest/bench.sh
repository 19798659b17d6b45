#!/usr/bin/env bash
# The three load scenarios of README's performance table, each against a
# fresh simulator and switch on loopback (separate processes, as in
# production). Writes loadtest/results/<scenario>.json and a markdown
# summary, results/summary.md.
#
#   bash loadtest/bench.sh            # all three, 10 s each
#   DURATION=5s bash loadtest/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
OUT=loadtest/results
mkdir -p "$OUT"
cargo build --release --quiet --bin switchyard -p switchyard
cargo build --release --quiet -p loadtest
BIN=target/release

SIM_PORT=${SIM_PORT:-19583}
SWITCH_PORT=${SWITCH_PORT:-18583}
ADMIN_PORT=${ADMIN_PORT:-19090}

config="$OUT/bench-switch.toml"
sed -e "s/^listen = \"127.0.0.1:8583\"/listen = \"127.0.0.1:$SWITCH_PORT\"/" \
    -e "s/^listen = \"127.0.0.1:9090\"/listen = \"127.0.0.1:$ADMIN_PORT\"/" \
    -e "s/^links = \[\"127.0.0.1:9583\"\]/links = [\"127.0.0.1:$SIM_PORT\"]/" \
    -e "s/^flavor = .*/flavor = \"${FLAVOR:-current-thread}\"/" \
    -e "s/^durability = .*/durability = \"${DURABILITY:-none}\"/" \
    -e "s|^dir = \"journal\"|dir = \"$OUT/journal\"|" \
    config/switchyard.toml > "$config"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

run_scenario() {
    local name=$1; shift
    rm -rf "$OUT/journal"
    "$BIN/switchyard" sim --listen "127.0.0.1:$SIM_PORT" >/dev/null &
    pids+=($!)
    "$BIN/switchyard" run --config "$config" >"$OUT/$name.switch.log" 2>&1 &
    pids+=($!)
    # Ready when /health says every link is up.
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    echo "== $name: $*"
    "$BIN/loadtest" --target "127.0.0.1:$SWITCH_PORT" --duration "$DURATION" --warmup 2s \
        --no-progress --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" "$@" \
        | tee "$OUT/$name.txt" || true
    cleanup
    pids=()
}

run_scenario closed-64x1 --connections 64 --in-flight 1
run_scenario pipelined-16x16 --connections 16 --in-flight 16
run_scenario open-50k --connections 64 --rate 50000 --threads 1

{
    echo "# Switchyard load scenarios"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%d). Switch runtime: ${FLAVOR:-current-thread}, journal durability ${DURABILITY:-none}."
    echo "Simulator, switch and loadtest on the same machine, loopback, $DURATION each."
    echo
    echo "| scenario | achieved/s | p50 | p99 | p99.9 | max | lost | mismatched |"
    echo "|---|---|---|---|---|---|---|---|"
    for s in closed-64x1 pipelined-16x16 open-50k; do
        python3 - "$OUT/$s.json" "$s" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency", {})
def us(v):
    return f"{v/1000:.2f} ms" if v >= 1000 else f"{v} µs"
print(f"| {sys.argv[2]} | {r.get('achieved_rate', 0):,.0f} | {us(lat.get('p50_us', 0))} | {us(lat.get('p99_us', 0))} | "
      f"{us(lat.get('p99.9_us', 0))} | {us(lat.get('max_us', 0))} | {r.get('lost', 0)} | {r.get('mismatched', 0)} |")
PY
    done
} > "$OUT/summary.md"
cat "$OUT/summary.md"
