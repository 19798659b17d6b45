#!/usr/bin/env bash
# A/B: two builds of the switch, each measured as a share of the limit chain
# (../shared/limit) in the same round, rounds alternating A, limit, B so that
# the machine's drift hits both alike. Prints each round and the medians.
#
#   A=/path/to/old/switchyard A_CONFIG=old.toml \
#   B=target/release/switchyard B_CONFIG=config/switchyard.toml \
#   ROUNDS=3 DURATION=5s bash loadtest/ab.sh
#
# With RATE=R it measures CPU instead: each build under the same open-loop
# rate (64 connections), the switch process's CPU time (user + system, from
# /proc) per answered request, which the machine's other load disturbs far
# less than throughput.
#
# The configs are rewritten for free ports, a temporary journal and
# durability "none", as ../shared/limit/compare.sh does; DURABILITY=fsync
# keeps the switch's default instead (the limit chain writes no journal:
# that share is the issue's fsync figure). One loadtest
# (target/release/loadtest) drives all three.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-../shared/limit}
A=${A:?A=path of the first switchyard binary}
B=${B:-target/release/switchyard}
A_CONFIG=${A_CONFIG:?A_CONFIG=its config file}
B_CONFIG=${B_CONFIG:-config/switchyard.toml}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CARDS=${CARDS:-100000}
SHAPES=${SHAPES:-"64x1 16x16"}
LOADTEST=${LOADTEST:-target/release/loadtest}
[ -x "$LOADTEST" ] || cargo build --release --quiet -p loadtest

work=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

rewrite() { # config out
    sed -e 's/^listen = "127.0.0.1:8583"/listen = "127.0.0.1:38583"/' \
        -e 's/^listen = "127.0.0.1:9090"/listen = "127.0.0.1:39090"/' \
        -e 's/^links = \["127.0.0.1:9583"\]/links = ["127.0.0.1:39583"]/' \
        -e "s/^durability = .*/durability = \"${DURABILITY:-none}\"/" \
        -e "s|^dir = \"journal\"|dir = \"$work/journal\"|" "$1" > "$2"
    # The store (on by default) in the run's directory too, emptied with
    # the journal: a store kept across runs already holds their transaction
    # ids, and would export less than the run made.
    if ! grep -q '^\[store\]' "$2"; then
        printf '\n[store]\nurl = "sqlite://%s/store/switchyard.db"\n' "$work" >> "$2"
    fi
}
rewrite "$A_CONFIG" "$work/a.toml"
rewrite "$B_CONFIG" "$work/b.toml"

rate() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["achieved_rate"])' "$1"; }

load() { # port c k out
    "$LOADTEST" --target "127.0.0.1:$1" --connections "$2" --in-flight "$3" --duration "$DURATION" \
        --warmup 1s --cards "$CARDS" --no-progress --json "$4" >"$4.txt" 2>&1 || true
}

limit_rate() { # c k
    "$LIMIT/bin/limit-host" 127.0.0.1:29583 iso batch 0 & pids+=($!)
    wait_port 29583
    "$LIMIT/bin/limit-switch" 127.0.0.1:28583 127.0.0.1:29583 2 0 batch "$CARDS" 2>/dev/null & pids+=($!)
    wait_port 28583
    load 28583 "$1" "$2" "$work/limit.json"
    stop
    rate "$work/limit.json"
}

switch_rate() { # binary config c k
    rm -rf "$work/journal" "$work/store"   # each run recovers an empty journal, not the last runs'
    "$1" sim --listen 127.0.0.1:39583 >/dev/null 2>&1 & pids+=($!)
    wait_port 39583
    "$1" run --config "$2" >"$work/switch.log" 2>&1 & pids+=($!)
    wait_port 38583; sleep 1
    load 38583 "$3" "$4" "$work/ours.json"
    stop
    rate "$work/ours.json"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

switch_cpu() { # binary config -> microseconds of switch CPU per answered request
    rm -rf "$work/journal" "$work/store"
    "$1" sim --listen 127.0.0.1:39583 >/dev/null 2>&1 & pids+=($!)
    wait_port 39583
    "$1" run --config "$2" >"$work/switch.log" 2>&1 & local sw=$!; pids+=($sw)
    wait_port 38583; sleep 1
    local t0; t0=$(cpu_ticks "$sw")
    "$LOADTEST" --target 127.0.0.1:38583 --connections 64 --rate "$RATE" --duration "$DURATION" \
        --warmup 0s --cards "$CARDS" --no-progress --json "$work/cpu.json" >"$work/cpu.txt" 2>&1 || true
    local t1; t1=$(cpu_ticks "$sw")
    stop
    python3 -c 'import json,os,sys; d=json.load(open(sys.argv[1])); n=d["answered"]; t=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf("SC_CLK_TCK"); print(f"{t*1e6/max(n,1):.2f}")' \
        "$work/cpu.json" "$t0" "$t1"
}

if [ -n "${RATE:-}" ]; then
    for round in $(seq 1 "$ROUNDS"); do
        a=$(switch_cpu "$A" "$work/a.toml"); b=$(switch_cpu "$B" "$work/b.toml")
        echo "round $round at $RATE/s: switch CPU per request A $a us, B $b us"
        echo "$a $b" >> "$work/cpu_results"
    done
    python3 - "$work/cpu_results" <<'EOF2'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
a = statistics.median(r[0] for r in rows); b = statistics.median(r[1] for r in rows)
print(f"median switch CPU per request: A {a:.2f} us, B {b:.2f} us (B/A {b/a:.2f}, {len(rows)} rounds)")
EOF2
    exit 0
fi

results="$work/results"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
    for shape in $SHAPES; do
        c=${shape%x*}; k=${shape#*x}
        a=$(switch_rate "$A" "$work/a.toml" "$c" "$k")
        l=$(limit_rate "$c" "$k")
        b=$(switch_rate "$B" "$work/b.toml" "$c" "$k")
        echo "$shape $a $l $b" >> "$results"
        python3 -c "import sys; a,l,b=map(float,sys.argv[2:5]); print(f'round {sys.argv[5]} {sys.argv[1]:>6}: A {a:,.0f}/s ({a/l:.2f})  limit {l:,.0f}/s  B {b:,.0f}/s ({b/l:.2f})')" "$shape" "$a" "$l" "$b" "$round"
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
    print(f"{shape:>6}: median share of the limit chain: A {sa:.2f}, B {sb:.2f} ({len(rs)} rounds)")
EOF
