#!/usr/bin/env bash
# The transaction store's cost, by back end: the closed loop 64 x 1
# through the switch with the store off, on SQLite and on PostgreSQL, in
# alternating rounds (this machine's speed drifts), the same three
# processes as loadtest/bench.sh. (loadtest/store-ab.sh measures the same
# cost as a share of the limit chain, A/B, medians.) For each run: throughput, the exporter
# thread's CPU, the rows it wrote, its lag at the end, and for PostgreSQL
# the server's CPU (it runs on the same two cores).
#
#   bash loadtest/store-bench.sh                  # 1 round, 5 s each
#   ROUNDS=3 DURATION=10s bash loadtest/store-bench.sh
#
# The exporter's own CPU per row, which other load on the machine barely
# moves (the figure to compare between builds): an open loop at a fixed
# rate, only the store modes, and optionally a perf profile of the
# exporter thread (loadtest/results/store-bench-MODE.perf.data):
#
#   RATE=20000 DURATION=10s MODES="sqlite postgres" bash loadtest/store-bench.sh
#   RATE=20000 MODES=sqlite PERF=1 bash loadtest/store-bench.sh
#
# PostgreSQL: a private server for the run (Debian's initdb and pg_ctl,
# as the `postgres` user when root), fsync on, on a free loopback port;
# stopped at the end. Output: loadtest/results/store-bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-1}
MODES=${MODES:-"off sqlite postgres"}
RATE=${RATE:-}
PERF=${PERF:-}
if [ -n "$RATE" ]; then
    shape=(--rate "$RATE" --connections 64 --threads 1)
    SHAPE="open loop $RATE/s over 64 connections"
else
    shape=(--connections 64 --in-flight 1 --threads 1)
    SHAPE="closed loop 64 x 1"
fi
OUT=loadtest/results
mkdir -p "$OUT"
cargo build --release --quiet --bin switchyard -p switchyard
cargo build --release --quiet -p loadtest
BIN=${BIN:-target/release}

SIM_PORT=${SIM_PORT:-19583}
SWITCH_PORT=${SWITCH_PORT:-18583}
ADMIN_PORT=${ADMIN_PORT:-19090}
PG_PORT=${PG_PORT:-15432}
HZ=$(getconf CLK_TCK)

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$PGBIN" ]; then
    echo "store-bench.sh: PostgreSQL is not installed: apt-get install -y postgresql" >&2
    exit 1
fi
PGDIR=$(mktemp -d /tmp/switchyard-pgbench.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PGDIR"
    as_pg=(runuser -u postgres --)
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
stop_pg() { "${as_pg[@]}" "$PGBIN/pg_ctl" stop -s -m fast -D "$PGDIR/data" >/dev/null 2>&1 || true; rm -rf "$PGDIR"; }
trap 'cleanup; stop_pg' EXIT

"${as_pg[@]}" "$PGBIN/initdb" -A trust -U switchyard -E UTF8 --locale=C -D "$PGDIR/data" >/dev/null
"${as_pg[@]}" "$PGBIN/pg_ctl" start -s -w -D "$PGDIR/data" -l "$PGDIR/server.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PGDIR"
PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U switchyard -qtA)

wait_until() {
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "store-bench.sh: gave up waiting for: $*" >&2
    return 1
}

# CPU seconds (user + system) of one /proc stat file.
cpu_of() { awk -v hz="$HZ" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "$1" 2>/dev/null || echo 0; }

# CPU seconds of the PostgreSQL server: the postmaster and its children.
pg_cpu() {
    local pm total=0
    pm=$(head -1 "$PGDIR/data/postmaster.pid")
    for p in $pm $(ps -o pid= --ppid "$pm"); do
        total=$(echo "$total + $(cpu_of /proc/$p/stat)" | bc)
    done
    echo "$total"
}

config_for() { # MODE -> config file
    local mode=$1 file="$OUT/store-bench-$1.toml"
    sed -e "s/^listen = \"127.0.0.1:8583\"/listen = \"127.0.0.1:$SWITCH_PORT\"/" \
        -e "s/^listen = \"127.0.0.1:9090\"/listen = \"127.0.0.1:$ADMIN_PORT\"/" \
        -e "s/^links = \[\"127.0.0.1:9583\"\]/links = [\"127.0.0.1:$SIM_PORT\"]/" \
        -e "s/^durability = .*/durability = \"none\"/" \
        -e "s|^dir = \"journal\"|dir = \"$OUT/journal\"|" \
        config/switchyard.toml > "$file"
    case $mode in
        # The store is on by default: off must say so.
        off) printf '\n[store]\nenabled = false\n' >> "$file" ;;
        sqlite) printf '\n[store]\nenabled = true\nurl = "sqlite://%s/store-bench.db"\n' "$OUT" >> "$file" ;;
        postgres) printf '\n[store]\nenabled = true\nurl = "postgres://switchyard@127.0.0.1:%s/%s"\n' \
            "$PG_PORT" "$2" >> "$file" ;;
    esac
    # Extra [store] keys for an experiment, e.g. STORE_EXTRA="poll_interval_ms = 100".
    [ -n "${STORE_EXTRA:-}" ] && [ "$mode" != off ] && printf '%s\n' "$STORE_EXTRA" >> "$file"
    echo "$file"
}

metric() { awk -v m="$1" '$1 == m { print $2 }' "$2" | head -1; }

rows=()
run() { # ROUND MODE
    local k=$1 mode=$2 db="" config switch exporter pg0=0 pg1=0
    rm -rf "$OUT/journal" "$OUT"/store-bench.db*
    if [ "$mode" = postgres ]; then
        db="bench_$k"
        "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    fi
    config=$(config_for "$mode" "$db")
    "$BIN/switchyard" sim --listen "127.0.0.1:$SIM_PORT" >/dev/null &
    pids+=($!)
    wait_until bash -c "exec 3<>/dev/tcp/127.0.0.1/$SIM_PORT"
    "$BIN/switchyard" run --config "$config" >"$OUT/store-bench-$mode.switch.log" 2>&1 &
    switch=$!
    pids+=($switch)
    wait_until curl -sf "http://127.0.0.1:$ADMIN_PORT/health"
    [ "$mode" = postgres ] && pg0=$(pg_cpu)
    exporter=$(grep -l '^store-export$' /proc/"$switch"/task/*/comm 2>/dev/null | head -1 || true)
    local cpu0=0 cpu1=0 perf=""
    [ -n "$exporter" ] && cpu0=$(cpu_of "${exporter%comm}stat")
    if [ -n "$PERF" ] && [ -n "$exporter" ]; then
        local tid=${exporter%/comm}
        perf record -q -g -t "${tid##*/}" -o "$OUT/store-bench-$mode.perf.data" >/dev/null 2>&1 &
        perf=$!
    fi
    "$BIN/loadtest" --target "127.0.0.1:$SWITCH_PORT" --duration "$DURATION" --warmup 1s \
        --no-progress --json "$OUT/store-bench-$mode.run$k.json" \
        "${shape[@]}" >/dev/null || true
    # The exporter's backlog at the end counts too: wait (bounded) until
    # it has caught up before reading its CPU and rows.
    local lag_end="" lag
    for _ in $(seq 1 100); do
        lag=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '$1 == "switchyard_store_export_lag_records" { print $2 }' | head -1)
        lag_end=${lag_end:-${lag:-}}
        [ "${lag:-0}" = 0 ] && break
        sleep 0.1
    done
    [ -n "$perf" ] && { kill -INT "$perf"; wait "$perf" || true; }
    [ "$mode" = postgres ] && pg1=$(pg_cpu)
    local cpu=0
    [ -n "$exporter" ] && cpu1=$(cpu_of "${exporter%comm}stat") && cpu=$(echo "$cpu1 - $cpu0" | bc)
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" >"$OUT/store-bench-$mode.run$k.metrics0" || true
    mv "$OUT/store-bench-$mode.run$k.metrics0" "$OUT/store-bench-$mode.run$k.metrics" 2>/dev/null || true
    local m="$OUT/store-bench-$mode.run$k.metrics"
    local rate written
    rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['achieved_rate']))" \
        "$OUT/store-bench-$mode.run$k.json" 2>/dev/null || echo "?")
    written=$(metric switchyard_store_rows_written_total "$m")
    lag=${lag_end:-}
    local per_row="-" pg="-"
    if [ -n "${written:-}" ] && [ "${written%.*}" -gt 0 ]; then
        per_row=$(echo "scale=2; $cpu * 1000000 / $written" | bc)
        if [ "$mode" = postgres ]; then
            pg=$(echo "scale=2; ($pg1 - $pg0) * 1000000 / $written" | bc)
        fi
    fi
    rows+=("| $k | $mode | $rate | ${written:--} | ${lag:--} | $cpu | $per_row | $pg |")
    echo "${rows[-1]}"
    cleanup
    pids=()
}

for k in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        run "$k" "$mode"
    done
done

{
    echo "# The store's cost by back end"
    echo
    echo "$(nproc) cores, $(uname -sr), $(date -u '+%Y-%m-%d %H:%M UTC'); load average before: $LOAD_BEFORE."
    echo "${SHAPE^}, $DURATION after 1 s warmup, durability none; PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), fsync on, same machine."
    echo
    echo "| round | store | transactions/s | rows written | lag at the end (records) | exporter CPU s (during the load) | exporter µs/row | PostgreSQL server µs/row |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} > "$OUT/store-bench.md"
cat "$OUT/store-bench.md"
