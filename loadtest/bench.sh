#!/usr/bin/env bash
# The three load scenarios of README's performance table, each against a
# fresh simulator and switch on loopback (separate processes, as in
# production). Writes loadtest/results/<scenario>.run<N>.json (and .txt,
# .hgrm) and a markdown summary, results/summary.md, with the median of
# each figure over the runs and its range.
#
#   bash loadtest/bench.sh            # all three, 10 s each, once
#   RUNS=5 bash loadtest/bench.sh     # five runs of each: medians
#   DURATION=5s bash loadtest/bench.sh
#
# A fourth scenario, sim-direct-64x1, points loadtest at the simulator
# itself (no switch): what two processes doing ping-pong over loopback
# reach on this box, the ceiling for a chain of three.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
RUNS=${RUNS:-1}
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

# Polls until a command succeeds (at most 10 s): the processes give no
# other readiness signal to a shell.
wait_until() {
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "bench.sh: gave up waiting for: $*" >&2
    return 1
}

start_sim() {
    "$BIN/switchyard" sim --listen "127.0.0.1:$SIM_PORT" >/dev/null &
    pids+=($!)
    wait_until bash -c "exec 3<>/dev/tcp/127.0.0.1/$SIM_PORT"
}

start_switch() {
    # The store (on by default) lives in data/ beside the journal: a store
    # left from the last run is ahead of the new, empty journal and the
    # switch refuses to start.
    rm -rf "$OUT/journal" "$OUT/data"
    "$BIN/switchyard" run --config "$config" >"$OUT/$1.switch.log" 2>&1 &
    pids+=($!)
    # Ready when /health answers 200: an acquirer has a link up (the
    # shipped config has one acquirer, so: its link is up).
    wait_until curl -sf "http://127.0.0.1:$ADMIN_PORT/health"
}

# run_scenario K NAME TARGET-PORT loadtest-flags...: run K of a scenario;
# the target is the switch (with the simulator behind it) or the
# simulator alone.
run_scenario() {
    local k=$1 name=$2 port=$3; shift 3
    {
        start_sim
        if [ "$port" = "$SWITCH_PORT" ]; then start_switch "$name"; fi
        echo "== $name (run $k of $RUNS): $*"
        # Through the switch, loadtest also reads the switch's own latency
        # over the measured period from its admin listener (--admin).
        local admin=()
        if [ "$port" = "$SWITCH_PORT" ]; then admin=(--admin "127.0.0.1:$ADMIN_PORT"); fi
        "$BIN/loadtest" --target "127.0.0.1:$port" --duration "$DURATION" --warmup 2s \
            --no-progress --json "$OUT/$name.run$k.json" --hgrm "$OUT/$name.run$k.hgrm" \
            "${admin[@]}" "$@" \
            | tee "$OUT/$name.run$k.txt" || true
        if [ "$port" = "$SWITCH_PORT" ]; then
            # The switch's own view: its request-duration histogram
            # (arrival to answer sent, warmup included), to tell its
            # share of the latency from the loopback hops and loadtest's.
            curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" >"$OUT/$name.run$k.metrics" || true
        fi
        cleanup
        pids=()
    }
}

rm -f "$OUT"/*.run*.json "$OUT"/*.run*.metrics
# Round-robin over the scenarios, not all runs of one then the next: this
# shared machine's speed drifts by 20% or more within the hour, and each
# round then sees the ceiling (sim-direct) under the same conditions.
for k in $(seq 1 "$RUNS"); do
    run_scenario "$k" closed-64x1 "$SWITCH_PORT" --connections 64 --in-flight 1 --threads 1
    run_scenario "$k" pipelined-16x16 "$SWITCH_PORT" --connections 16 --in-flight 16
    run_scenario "$k" open-50k "$SWITCH_PORT" --connections 64 --rate 50000 --threads 1
    run_scenario "$k" sim-direct-64x1 "$SIM_PORT" --connections 64 --in-flight 1 --threads 1
done

{
    echo "# Switchyard load scenarios"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%d). Switch runtime: ${FLAVOR:-current-thread}, journal durability ${DURABILITY:-none}."
    echo "Simulator, switch and loadtest on the same machine, loopback, $DURATION each, $RUNS run(s) of each: median (range)."
    echo
    echo "| scenario | achieved/s | approved/s | p50 | p99 | p99.9 | max | lost | mismatched | errors (switch refusals) | in the switch: p99 at most, share within 1 ms |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for s in closed-64x1 pipelined-16x16 open-50k sim-direct-64x1; do
        python3 - "$s" "$OUT"/"$s".run*.json <<'PY'
import json, os, re, statistics, sys
# A scenario with no runs leaves its glob unexpanded: no files.
name, files = sys.argv[1], [f for f in sys.argv[2:] if os.path.exists(f)]

def in_switch(json_file):
    """(p99 bucket bound in µs, share within 1 ms) from the switch's
    request-duration histogram, or None without a scrape."""
    path = json_file[: -len(".json")] + ".metrics"
    if not os.path.exists(path):
        return None
    buckets = []
    for line in open(path):
        m = re.match(r'switchyard_request_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m and m.group(1) != "+Inf":
            buckets.append((float(m.group(1)), float(m.group(2))))
    total = next((float(l.split()[1]) for l in open(path)
                  if l.startswith("switchyard_request_duration_seconds_count")), 0.0)
    if not buckets or total == 0:
        return None
    p99 = next((le for le, n in buckets if n >= 0.99 * total), float("inf"))
    within_1ms = next((n for le, n in buckets if abs(le - 0.001) < 1e-9), 0.0) / total
    return p99 * 1e6, within_1ms
runs = [json.load(open(f)) for f in files]
if not runs:
    sys.exit(0)
def us(v):
    return f"{v/1000:.2f} ms" if v >= 999.5 else f"{v:.0f} µs"
def cell(values, fmt):
    med = fmt(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fmt(min(values))}-{fmt(max(values))})"
# A run with no answers has null latencies: left out of the medians.
lat = lambda k: [v for v in (r.get("latency", {}).get(k) for r in runs) if v is not None] or [0]
rate = [r.get("achieved_rate", 0) for r in runs]
views = [v for v in (in_switch(f) for f in files) if v]
inside = "-"
if views:
    inside = (f"{cell([v[0] for v in views], us)}, "
              f"{cell([v[1] * 100 for v in views], lambda x: f'{x:.2f}%')}")
approved = [r.get("approved_rate", 0) for r in runs]
print(f"| {name} | {cell(rate, lambda v: f'{v:,.0f}')} | {cell(approved, lambda v: f'{v:,.0f}')} | "
      f"{cell(lat('p50_us'), us)} | "
      f"{cell(lat('p99_us'), us)} | {cell(lat('p99.9_us'), us)} | {cell(lat('max_us'), us)} | "
      f"{sum(r.get('lost', 0) for r in runs)} | {sum(r.get('mismatched', 0) for r in runs)} | "
      f"{sum(r.get('error_count', 0) for r in runs)} | {inside} |")
PY
    done
    # The closed loop against the ceiling, round by round: a ratio that
    # the machine's drift mostly cancels out of.
    python3 - "$OUT" "$RUNS" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
ratios = []
for k in range(1, runs + 1):
    try:
        a = json.load(open(os.path.join(out, f"closed-64x1.run{k}.json")))["achieved_rate"]
        b = json.load(open(os.path.join(out, f"sim-direct-64x1.run{k}.json")))["achieved_rate"]
    except (OSError, KeyError, ValueError):
        continue
    if b > 0:
        ratios.append(a / b)
if ratios:
    print()
    print(f"closed-64x1 through the switch reached {statistics.median(ratios):.0%} "
          f"({min(ratios):.0%}-{max(ratios):.0%}) of sim-direct-64x1 in the same round "
          "(two processes, one hop: the ceiling for the chain of three).")
PY
} > "$OUT/summary.md"
cat "$OUT/summary.md"
