#!/usr/bin/env bash
# The hot path's cost of the transaction store (issue 14's target: at most
# 5% lost at the limit chain's closed-loop rate): the same switch binary
# with `[store] enabled = false` (A) and with the default SQLite store (B),
# each measured as a share of the limit chain (../shared/limit) in the same
# round, rounds alternating A, limit, B so the machine's drift hits both
# alike. Prints each round, the median shares and B's loss against A.
#
#   ROUNDS=5 DURATION=10s bash loadtest/store-ab.sh
#   LIMIT=/work/shared/limit SHAPES="64x1 16x16" bash loadtest/store-ab.sh
#
# The shipped config/switchyard.toml, rewritten for free ports, a fresh
# journal and store per run (removed before each, so every run starts
# empty) and durability "none", as loadtest/ab.sh does. B's export lag at
# the end of each run (`switchyard_store_export_lag_records`) is printed
# too: a store that keeps up shows a small one. Run it on a quiet machine;
# say what else ran (the load average before is printed).
#
# EXPORTER_CORE=1: a box with a core for the exporter, which a production
# switch has and this 2-core VM has not. Everything (load generator,
# limit chain, simulator, switch) runs on CPU 0 (`taskset -c 0`), and the
# switch's `store-export` thread is moved to CPU 1 once it is up. The loss
# then shows what the exporter costs the hot path besides its CPU (locks,
# the journal's file, caches); without it, the loss is mostly the
# exporter's CPU taken from the same two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-../shared/limit}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CARDS=${CARDS:-100000}
SHAPES=${SHAPES:-"64x1"}
BIN=${BIN:-target/release/switchyard}
LOADTEST=${LOADTEST:-target/release/loadtest}
[ -x "$BIN" ] || cargo build --release --quiet --bin switchyard -p switchyard
[ -x "$LOADTEST" ] || cargo build --release --quiet -p loadtest
for tool in limit-host limit-switch; do
    [ -x "$LIMIT/bin/$tool" ] || { echo "store-ab.sh: no $LIMIT/bin/$tool (set LIMIT)" >&2; exit 1; }
done
on_chain=()
if [ -n "${EXPORTER_CORE:-}" ]; then
    command -v taskset >/dev/null || { echo "store-ab.sh: EXPORTER_CORE needs taskset (util-linux)" >&2; exit 1; }
    [ "$(nproc)" -ge 2 ] || { echo "store-ab.sh: EXPORTER_CORE needs 2 cores" >&2; exit 1; }
    on_chain=(taskset -c 0)
fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"

work=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

rewrite() { # store-table out
    sed -e 's/^listen = "127.0.0.1:8583"/listen = "127.0.0.1:38583"/' \
        -e 's/^listen = "127.0.0.1:9090"/listen = "127.0.0.1:39090"/' \
        -e 's/^links = \["127.0.0.1:9583"\]/links = ["127.0.0.1:39583"]/' \
        -e 's/^durability = .*/durability = "none"/' \
        -e "s|^dir = \"journal\"|dir = \"$work/journal\"|" config/switchyard.toml > "$2"
    if grep -q '^\[store\]' "$2"; then
        echo "store-ab.sh: config/switchyard.toml has a [store] table; this script adds its own" >&2
        exit 1
    fi
    printf '\n%s\n' "$1" >> "$2"
}
rewrite '[store]
enabled = false' "$work/off.toml"
rewrite "[store]
url = \"sqlite://$work/store/switchyard.db\"" "$work/on.toml"

rate() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["achieved_rate"])' "$1"; }

load() { # port c k out
    "${on_chain[@]}" "$LOADTEST" --target "127.0.0.1:$1" --connections "$2" --in-flight "$3" --duration "$DURATION" \
        --warmup 1s --cards "$CARDS" --no-progress --json "$4" >"$4.txt" 2>&1 || true
}

limit_rate() { # c k
    "${on_chain[@]}" "$LIMIT/bin/limit-host" 127.0.0.1:29583 iso batch 0 & pids+=($!)
    wait_port 29583
    "${on_chain[@]}" "$LIMIT/bin/limit-switch" 127.0.0.1:28583 127.0.0.1:29583 2 0 batch "$CARDS" 2>/dev/null & pids+=($!)
    wait_port 28583
    load 28583 "$1" "$2" "$work/limit.json"
    stop
    rate "$work/limit.json"
}

switch_rate() { # config c k -> rate [lag]
    rm -rf "$work/journal" "$work/store"
    "${on_chain[@]}" "$BIN" sim --listen 127.0.0.1:39583 >/dev/null 2>&1 & pids+=($!)
    wait_port 39583
    "${on_chain[@]}" "$BIN" run --config "$1" >"$work/switch.log" 2>&1 & pids+=($!)
    local switch=$!
    wait_port 38583; sleep 1
    if [ -n "${EXPORTER_CORE:-}" ]; then
        local t
        for t in /proc/"$switch"/task/*; do
            [ "$(cat "$t/comm" 2>/dev/null)" = store-export ] && taskset -p -c 1 "${t##*/}" >/dev/null
        done
    fi
    load 38583 "$2" "$3" "$work/ours.json"
    local lag
    lag=$(curl -sf http://127.0.0.1:39090/metrics \
        | awk '$1 == "switchyard_store_export_lag_records" { print $2 }' | head -1 || true)
    stop
    echo "$(rate "$work/ours.json") ${lag:--}"
}

results="$work/results"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
    for shape in $SHAPES; do
        c=${shape%x*}; k=${shape#*x}
        read -r a _ < <(switch_rate "$work/off.toml" "$c" "$k")
        l=$(limit_rate "$c" "$k")
        read -r b lag < <(switch_rate "$work/on.toml" "$c" "$k")
        echo "$shape $a $l $b" >> "$results"
        python3 -c "import sys; a,l,b=map(float,sys.argv[2:5]); print(f'round {sys.argv[5]} {sys.argv[1]:>6}: store off {a:,.0f}/s ({a/l:.3f})  limit {l:,.0f}/s  store on {b:,.0f}/s ({b/l:.3f}), export lag at the end {sys.argv[6]} records')" \
            "$shape" "$a" "$l" "$b" "$round" "$lag"
    done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    shape, a, l, b = line.split()
    rows.setdefault(shape, []).append((float(a), float(l), float(b)))
for shape, rs in rows.items():
    sa = statistics.median(a / l for a, l, _ in rs)
    sb = statistics.median(b / l for _, l, b in rs)
    loss = 1 - sb / sa if sa > 0 else float("nan")
    verdict = "within" if loss <= 0.05 else "OVER"
    print(f"{shape:>6}: median share of the limit chain: store off {sa:.3f}, store on {sb:.3f}; "
          f"the store costs {loss:.1%} ({verdict} the 5% target, {len(rs)} rounds)")
EOF
