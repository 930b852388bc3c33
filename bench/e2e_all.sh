#!/usr/bin/env bash
# Every end-to-end configuration of bench/RESULTS.md, one after the other (about 7 minutes on 2 cores):
#
#     bench/e2e_all.sh [OUT]        # OUT defaults to bench/e2e
#
# Writes OUT/results.json (every step of every configuration), OUT/latency.png (the plot), OUT/<name>.log
# (each run's printed steps and its profile summary) and OUT/prof-<name>.txt (py-spy, raw; not kept in
# git). Run it on a quiet machine: every other process on the host takes CPU from the figures.
# Needs `./scripts/bootstrap`, `scripts/smsc-fixture-install`, `.venv/bin/pip install -e '.[bench]'`
# and PostgreSQL on 127.0.0.1 (trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/e2e}
mkdir -p "$out"
rm -f "$out/results.json"
rates=100,150,200,250,300,400,500,600,800,1000

run() {  # NAME LABEL ARGS...: one configuration
    local name=$1 label=$2
    shift 2
    echo "== $label ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg))"
    .venv/bin/python bench/e2e_bench.py "$@" --rates="$rates" --step-seconds 3 --closed-payments 3000 \
        --label "$label" --save "$out/results.json" --plot "$out/latency.png" \
        --profile "$out/prof-$name.txt" | tee "$out/$name.log" || { echo "== $label FAILED"; failed=1; }
}
failed=0

run sqlite "sqlite" --config sqlite
run postgresql "postgresql" --config postgresql
run sqlite-w2 "sqlite, 2 workers, 2 binds" --config sqlite --workers 2 --binds 2
run postgresql-w2 "postgresql, 2 workers, 2 binds" --config postgresql --workers 2 --binds 2
run two-daemons "two daemons, one postgresql" --config two-daemons --binds 2
run pg-10x120 "postgresql, 10 binds x 120 TPS" --config postgresql --binds 10 --bind-tps 120
run pg-10x12 "postgresql, 10 binds x 12 TPS (caps sum 120/s)" --config postgresql --binds 10 --bind-tps 12
run sqlite-late "sqlite, SMSC answering 20 ms late" --config sqlite --smsc-delay-ms 20
run postgresql-late "postgresql, SMSC answering 20 ms late" --config postgresql --smsc-delay-ms 20
# The profiles summarised together, each area's share of the first daemon's samples applied to the
# daemon CPU per payment of the closed loop (all daemons and workers: they run the same code).
for f in "$out"/prof-*.txt; do
    name=$(basename "$f" .txt)
    name=${name#prof-}
    ms=$(grep -oP '^closed.*CPU ms/pay: daemon \K[0-9.]+' "$out/$name.log" || true)
    echo "== $name"
    .venv/bin/python bench/profile_summary.py "$f" --top 25 ${ms:+--cpu-ms "$ms"}
done > "$out/profiles.txt"
echo "== done $(date -u +%H:%M:%S) UTC: $out"
exit "$failed"
