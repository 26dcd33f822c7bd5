#!/usr/bin/env bash
# CPU fine-tune throughput: nli-bert vs the seed's d2l PyTorch code, same
# machine, same run, same data, same (random) bert.small-shaped weights.
#
#   scripts/bench_cpu.sh            # from anywhere; runs in the repo root
#
# Environment (defaults):
#   STEPS=30        timed steps (the peer also runs WARMUP untimed steps first;
#                   ours runs WARMUP+STEPS steps and its examples/sec covers
#                   ALL of them, incl. the first -> slightly pessimistic for ours)
#   WARMUP=3
#   BATCH=64  THREADS=2  MAX_LEN=128 (peer's padded length)
#   RUNS=3          rounds; each round runs ours, peer fixed, peer dynamic
#                   (interleaved); the table quotes medians
#   DATA=../shared/data/snli_dev.tsv   (relative to the repo root, resolved)
#   BENCH_DIR=${TMPDIR:-/tmp}/nli-bert-bench  (model made once, reused)
#   PYTHON=python3  (needs torch + d2l==0.17.6, see scripts/d2l_stubs.py)
#   NO_BUILD=1      skip `cargo build --release` (use the existing binary)
#   BIN=target/release/nli-bert  (the binary to time)
#
# Peer = scripts/bench_cpu_peer.py (the CPU comparison of BENCHMARKS.md); model =
# scripts/make_bench_model.py (bert.small shapes, vocab 60005, seed 0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STEPS=${STEPS:-30}
WARMUP=${WARMUP:-3}
BATCH=${BATCH:-64}
THREADS=${THREADS:-2}
MAX_LEN=${MAX_LEN:-128}
RUNS=${RUNS:-3}
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data/snli_dev.tsv}
DATA=$(realpath "$DATA")
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/nli-bert-bench}
MODEL=$BENCH_DIR/bert.small
BIN=${BIN:-$ROOT/target/release/nli-bert}
LOG=$BENCH_DIR/logs.$(date +%Y%m%d-%H%M%S)

[ -f "$DATA" ] || { echo "bench_cpu.sh: no data file $DATA" >&2; exit 1; }
mkdir -p "$BENCH_DIR" "$LOG"

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "# cargo build --release" >&2
    cargo build --release >&2
fi
[ -x "$BIN" ] || { echo "bench_cpu.sh: no binary $BIN" >&2; exit 1; }

MAKE_CMD="$PYTHON scripts/make_bench_model.py --out $MODEL --vocab 60005 --seed 0"
if [ ! -f "$MODEL/vocab.json" ] || [ ! -f "$MODEL/pretrained.params" ]; then
    echo "# $MAKE_CMD" >&2
    $MAKE_CMD >&2
fi

OURS_CMD="$BIN finetune --model $MODEL --heads 4 --data $DATA --epochs 1 --batch-size $BATCH --max-steps $((WARMUP + STEPS)) --threads $THREADS --precision f32 --quiet"
PEER_CMD="$PYTHON scripts/bench_cpu_peer.py --model $MODEL --data $DATA --batch-size $BATCH --steps $STEPS --warmup $WARMUP --threads $THREADS --max-len $MAX_LEN --json"

load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_BEFORE=$(load)

ours=() fixed=() dynamic=() mtok_fixed="" mtok_dyn=""
for r in $(seq 1 "$RUNS"); do
    echo "# round $r/$RUNS (load $(load))" >&2
    $OURS_CMD >"$LOG/ours.$r.txt" 2>&1 || {
        echo "bench_cpu.sh: ours failed, output:" >&2; cat "$LOG/ours.$r.txt" >&2; exit 1; }
    v=$(sed -nE 's/.* ([0-9]+(\.[0-9]+)?) examples\/sec.*/\1/p' "$LOG/ours.$r.txt" | tail -1)
    [ -n "$v" ] || { echo "bench_cpu.sh: no 'examples/sec' in ours' output:" >&2
                     cat "$LOG/ours.$r.txt" >&2; exit 1; }
    ours+=("$v")
    for pad in fixed dynamic; do
        $PEER_CMD --padding $pad >"$LOG/peer.$pad.$r.txt" 2>&1 || {
            echo "bench_cpu.sh: peer ($pad) failed:" >&2; cat "$LOG/peer.$pad.$r.txt" >&2; exit 1; }
        json=$(grep '^{' "$LOG/peer.$pad.$r.txt" | tail -1)
        v=$(printf '%s' "$json" | $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["examples_per_sec"])')
        mt=$(printf '%s' "$json" | $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["mean_tokens"])')
        PEER_NAME=$(printf '%s' "$json" | $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["peer"])')
        if [ $pad = fixed ]; then fixed+=("$v"); mtok_fixed=$mt; else dynamic+=("$v"); mtok_dyn=$mt; fi
    done
done
LOAD_AFTER=$(load)

CPU=$(lscpu | sed -nE 's/^Model name:[[:space:]]+//p' | head -1)
FLAGS=$(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')
REV=$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')

$PYTHON - "$PEER_NAME" "$mtok_fixed" "$mtok_dyn" "${ours[*]}" "${fixed[*]}" "${dynamic[*]}" <<'EOF'
import statistics, sys
peer, mt_f, mt_d = sys.argv[1:4]
runs = [list(map(float, a.split())) for a in sys.argv[4:7]]
ours, fixed, dyn = (statistics.median(r) for r in runs)
rows = [('nli-bert (ours)', 'own (f32)', ours, runs[0], '-'),
        (peer, 'fixed, as the seed (len %s)' % mt_f, fixed, runs[1],
         '%.2fx' % (ours / fixed)),
        (peer, 'dynamic (mean len %s)' % mt_d, dyn, runs[2],
         '%.2fx' % (ours / dyn))]
print('| engine | padding | examples/s (median) | runs | ratio ours/peer |')
print('|---|---|---:|---|---:|')
for e, p, m, r, q in rows:
    print('| %s | %s | %.1f | %s | %s |' % (e, p, m, ', '.join('%.1f' % x for x in r), q))
EOF

cat <<EOF

machine: $CPU, nproc $(nproc), flags: $FLAGS
date: $(date -u +%Y-%m-%dT%H:%M:%SZ), repo $REV, load avg before $LOAD_BEFORE, after $LOAD_AFTER
data: $DATA; model: $MODEL (random weights, bert.small shapes, vocab 60005)
steps: ours $((WARMUP + STEPS)) steps, examples/sec over all of them (incl. the first);
       peer $STEPS timed steps after $WARMUP warm-up (train steps only, as d2l's Timer)
logs: $LOG
commands ($RUNS rounds, interleaved):
  $OURS_CMD
  $PEER_CMD --padding fixed
  $PEER_CMD --padding dynamic
EOF
