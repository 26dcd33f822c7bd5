#!/usr/bin/env bash
# One GPU session in one command: build everything here (Rust, wheels, data), run it all on a lent
# GPU machine that has CUDA 13.0, driver 580, Python with PyTorch, and no Rust, no internet.
#
#   scripts/gpu_run.sh build   (here) cargo build --release nli-bert, cargo test --release
#       --no-run, cargo bench --no-run; keeps the test executables that hold `cuda` or `nvrtc`
#       tests, strips debug info; downloads (once, cached in $WHEEL_CACHE) the wheels the GPU
#       machine lacks: d2l==0.17.6 and, unless HF_WHEELS=0, transformers==5.24.0 +
#       tokenizers==0.23.3 (a fallback: the machine's image has transformers 5.17, used first);
#       copies ../shared/data/{snli_dev,sick_train,sick_test,sick_dev}.tsv. Packs it all into
#       gpu-bundle/ (git-ignored): bin.tar.gz, wheels/, wheels-hf/, data/, manifest.txt, run.sh
#       (a copy of this script). Prints its size: the device tool carries at most 64 MiB with
#       the working tree (about 5 MiB).
#   scripts/gpu_run.sh run     (there; also gpu-bundle/run.sh) the steps below, in this order,
#       each under a time cap and all within RUN_BUDGET (540 s; the tool stops a command at
#       600). Python steps use the working tree's scripts/ (they travel with it) and the bundled
#       wheels, installed with pip --no-index --no-deps --target into /tmp.
#         tests      each bundled test executable filtered to `cuda nvrtc`, with
#                    NLI_BERT_REQUIRE_CUDA=1 NLI_BERT_REQUIRE_NVRTC=1 (a missing GPU or NVRTC
#                    fails instead of skipping); all of them within TESTS_BUDGET (180 s)
#         finetune   scripts/make_bench_model.py (d2l bert.small shape, random weights, 60,005
#                    tokens), then `nli-bert finetune --device cuda` on snli_dev.tsv, 2 epochs,
#                    batch 512, tested on sick_test.tsv, saved with --out, then `nli-bert eval
#                    --device cuda` of the saved model; once more with --precision bf16.
#                    Epoch 2's examples/s is our bert.small figure.
#         bench      `nli-bert bench --shape bert.small|bert.base --device cuda --precision
#                    f32|bf16 --batch-size 512 --steps 30|10 --warmup 3 --json --data
#                    snli_dev.tsv --repeat 1`
#         d2l        the seed's d2l code on the card (scripts/bench_cpu_peer.py --device cuda:
#                    DataParallel as train_ch13, fp32, batch 512, padded to 128 as in the book;
#                    then dynamic padding), same random bert.small weights and data
#         hf         scripts/bench_hf_peer.py: transformers bert.base shape (random init from a
#                    BertConfig, bert-base-uncased's vocab.txt from tests/fixtures/hf), bf16
#                    autocast, dynamic padding, fused AdamW, batch 512; it saves its initial
#                    model and `nli-bert finetune --device cuda` trains that same model (2 epochs)
#         learn      `nli-bert finetune --model scratch` on SICK, 10 epochs, batch 32, lr 3e-4:
#                    learning on the card (the CPU run of the same command: test acc 0.639)
#         criterion  the criterion benches filtered to BENCH_FILTER (default `cuda`), what is left
#       Steps run only when STEPS names them (issue 12's proof: STEPS="tests bench e2e sanitizer
#       ncu hf hfc d2l"):
#         e2e        examples/gen_snli writes 550,152 SNLI-format pairs, then `nli-bert finetune`
#                    (bench model, bf16, batch 512) 5 epochs on them, tested on snli_dev.tsv;
#                    wall time from process start (target < 15 s)
#         ncu        ncu --clock-control none --metrics gpu__time_duration.sum --print-summary
#                    per-kernel around 3 bench steps (bf16), both shapes; the summary in the logs
#         sanitizer  compute-sanitizer memcheck, racecheck, synccheck, initcheck on one tiny
#                    training step, f32 and bf16 (a reported error fails the run)
#         hfc        the HF peer with torch.compile (dynamic shapes), a second bert.base peer
#       The bench step also runs bf16 as first measured (NLI_BERT_BF16_GEMM=copies: conversion
#       kernels before each GEMM; --attention classic), bf16 without cuBLASLt's fused epilogues
#       (NLI_BERT_CUBLASLT=0), bf16 without step graphs (--graphs off), bf16 with f32 activations
#       (NLI_BERT_BF16_STORAGE=0: the products round f32 operands inside cuBLAS), and every bench with
#       --breakdown (time per op family, in the summary; its extra steps run op by op): the
#       before and after of issue 12.
#       Output in $OUT (default ./gpu-out), at most 8 files as the device tool returns:
#         summary.txt (card, date, tests, our figures, the peers', ratios; also printed at the
#         end), env.txt (nvidia-smi, libraries, bundle), tests.log, steps.log (every other
#         step's output, in order), results.tsv (key<TAB>value), logs.tar.gz (each step's log,
#         metrics.jsonl and curves.svg of the runs). Exit status 1 if a test failed.
#
# A GPU session (the device tool; no GPU here):
#   1. here:   scripts/gpu_run.sh build
#   2. device: run(command="scripts/gpu_run.sh run", carry=["gpu-bundle"], timeout_s=600)
#   3. read summary.txt under the reply's files_at; put the figures in BENCHMARKS.md with the
#      card's name and the date.
#
# Knobs for `run` (environment):
#   STEPS            steps to run, in the order above (default: all of them)
#   RUN_BUDGET       seconds for the whole run (540); TESTS_BUDGET (180) for all test executables,
#                    TEST_TIMEOUT (150) for one
#   DEVICE           nli-bert's and the peers' device (cuda)
#   BATCH (512), EPOCHS (2), PEER_STEPS (30 timed steps, after 3 warm-up), HF_SHAPE (bert.base)
#   BENCH_ARGS       criterion arguments (`--warm-up-time 1 --measurement-time 3`); BENCH_FILTER
#                    (`cuda`; empty = all)
#   HF_FROM          auto (the machine's transformers if it imports, else the bundled wheels),
#                    bundle, or system
#   NLI_BERT_GPU_EXTRA  arguments for one more `nli-bert` command (log in steps.log)
#   KEEP_WORK=1      keep the work folder in /tmp (models, unpacked executables) after the run
#   DRY_RUN=1        check the plumbing on a machine without a GPU: the REQUIRE variables are
#                    not set (CUDA tests skip), DEVICE=cpu, tiny sizes (batch 16, a few steps,
#                    HF shape `tiny`, 1 epoch). Its figures mean nothing.
# Knobs for `build`: HF_WHEELS=0 (no transformers wheels), WHEEL_CACHE (default
#   ~/.cache/nli-bert-gpu-wheels), SHARED_DATA (default ../shared/data), NO_CARGO=1 (re-pack the
#   wheels, data and script around the executables of the last build).
# Tests that read fixtures through the build machine's path (CARGO_MANIFEST_DIR) or run the
# `nli-bert` binary (CARGO_BIN_EXE_nli-bert) work because `run` links that path to the checkout
# when it does not exist there and puts the bundled binary under target/release/.
set -euo pipefail

mode="${1:-}"
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
if [ -z "$mode" ] && [ -f "$(dirname "$self")/bin.tar.gz" ]; then
    mode=run # gpu-bundle/run.sh with no argument
fi

D2L_WHEEL="d2l==0.17.6"
HF_WHEEL_SPECS="transformers==5.24.0 tokenizers==0.23.3"
DATA_FILES="snli_dev.tsv sick_train.tsv sick_test.tsv sick_dev.tsv"

# pip download NAME==VERSION into $1 unless a wheel of that version is already there; copy it
# to $2. The GPU machine's Python is 3.12 on x86-64 (device README).
fetch_wheel() {
    local cache=$1 dest=$2 spec=$3 name version found
    name="${spec%%==*}"
    version="${spec##*==}"
    found="$(find "$cache" -maxdepth 1 -name "${name//-/_}-${version}-*.whl" | head -1)"
    if [ -z "$found" ]; then
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d "$cache" "$spec" >&2 || return 1
        found="$(find "$cache" -maxdepth 1 -name "${name//-/_}-${version}-*.whl" | head -1)"
    fi
    [ -n "$found" ] || return 1
    cp "$found" "$dest/"
}

build() {
    cd "$(dirname "$self")/.."
    local root bundle stage
    root="$(pwd)"
    bundle="$root/gpu-bundle"
    stage="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: $stage is local
    trap "rm -rf '$stage'" EXIT
    mkdir -p "$stage/bin" "$stage/wheels" "$stage/wheels-hf" "$stage/data"

    if [ "${NO_CARGO:-0}" = 1 ]; then
        [ -f "$bundle/bin.tar.gz" ] || { echo "NO_CARGO=1 needs an earlier gpu-bundle/bin.tar.gz" >&2; exit 2; }
        echo "== NO_CARGO=1: keeping the executables of gpu-bundle/bin.tar.gz"
        tar -xzf "$bundle/bin.tar.gz" -C "$stage/bin"
        grep -E '^(test|bench) ' "$bundle/manifest.txt" >"$stage/manifest.files" || true
        grep -E '^(build_root|git|date|rustc) ' "$bundle/manifest.txt" >"$stage/manifest.head"
    else
        echo "== cargo build --release --bin nli-bert --example gen_snli"
        cargo build --release --bin nli-bert --example gen_snli
        echo "== cargo test --release --no-run"
        cargo test --release --no-run --message-format=json-render-diagnostics >"$stage/tests.json"
        echo "== cargo bench --no-run"
        cargo bench --no-run --message-format=json-render-diagnostics >"$stage/benches.json"

        # "kind<TAB>name<TAB>path" for every test / bench executable.
        python3 - "$stage/tests.json" "$stage/benches.json" >"$stage/exes.tsv" <<'PY'
import json, sys
seen = set()
for path in sys.argv[1:]:
    for line in open(path):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        t = m["target"]
        kind = "bench" if "bench" in t["kind"] else ("test" if m["profile"]["test"] else None)
        if kind is None or m["executable"] in seen:
            continue
        seen.add(m["executable"])
        name = t["name"] if "test" in t["kind"] or "bench" in t["kind"] else "lib-" + t["name"]
        print(f"{kind}\t{name}\t{m['executable']}")
PY

        local kind name exe n
        : >"$stage/manifest.files"
        while IFS=$'\t' read -r kind name exe; do
            n=""
            if [ "$kind" = test ]; then
                # Keep only executables with tests this run will select.
                n="$("$exe" --list --format terse 2>/dev/null | grep -Ec '(cuda|nvrtc).*: test$' || true)"
                [ "${n:-0}" -gt 0 ] || continue
            fi
            strip --strip-debug -o "$stage/bin/$kind-$name" "$exe"
            echo "$kind $kind-$name${n:+ $n}" >>"$stage/manifest.files"
        done <"$stage/exes.tsv"
        strip --strip-debug -o "$stage/bin/nli-bert" "$root/target/release/nli-bert"
        strip --strip-debug -o "$stage/bin/gen_snli" "$root/target/release/examples/gen_snli"
        {
            echo "build_root $root"
            echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
            echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)"
            echo "rustc $(rustc --version)"
        } >"$stage/manifest.head"
    fi

    echo "== wheels"
    local cache spec wheels_ok=1 hf_ok=0
    cache="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nli-bert-gpu-wheels}"
    mkdir -p "$cache"
    fetch_wheel "$cache" "$stage/wheels" "$D2L_WHEEL" || {
        wheels_ok=0
        echo "warning: no $D2L_WHEEL wheel (pip download failed): the d2l peer will be skipped there" >&2
    }
    if [ "${HF_WHEELS:-1}" = 1 ]; then
        hf_ok=1
        for spec in $HF_WHEEL_SPECS; do
            fetch_wheel "$cache" "$stage/wheels-hf" "$spec" || {
                hf_ok=0
                echo "warning: no $spec wheel: the HF peer will use the machine's transformers only" >&2
            }
        done
        [ "$hf_ok" = 1 ] || rm -f "$stage"/wheels-hf/*.whl
    fi

    echo "== data"
    local data f
    data="${SHARED_DATA:-$root/../shared/data}"
    for f in $DATA_FILES; do
        if [ -f "$data/$f" ]; then
            cp "$data/$f" "$stage/data/"
        else
            echo "warning: no $data/$f: the steps that read it will be skipped there" >&2
        fi
    done

    rm -rf "$bundle"
    mkdir -p "$bundle"
    tar -C "$stage/bin" -cf - . | gzip -9 >"$bundle/bin.tar.gz"
    cp -r "$stage/wheels" "$stage/wheels-hf" "$stage/data" "$bundle/"
    {
        cat "$stage/manifest.head"
        cat "$stage/manifest.files"
        for f in "$bundle"/wheels/*.whl "$bundle"/wheels-hf/*.whl "$bundle"/data/*; do
            [ -e "$f" ] && echo "file ${f#"$bundle"/} $(du -b "$f" | cut -f1)"
        done
    } >"$bundle/manifest.txt"
    cp "$self" "$bundle/run.sh"
    chmod +x "$bundle/run.sh"

    echo "== gpu-bundle: $(grep -cE '^(test|bench) ' "$bundle/manifest.txt") test/bench executables + nli-bert, wheels $([ $wheels_ok = 1 ] && echo d2l || echo none)$([ $hf_ok = 1 ] && echo ' + transformers/tokenizers'), data"
    sed 's/^/   /' "$bundle/manifest.txt"
    du -sh "$bundle"/*
    local bytes tree
    bytes=$(du -sb "$bundle" | cut -f1)
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" { s += $1 } END { print s + 0 }')
    echo "== bundle $((bytes / 1024 / 1024)) MiB + working tree $((tree / 1024 / 1024)) MiB = $(((bytes + tree) / 1024 / 1024)) MiB of the 64 MiB the device tool carries"
    if [ $((bytes + tree)) -gt $((60 * 1024 * 1024)) ]; then
        echo "warning: over 60 MiB: build with HF_WHEELS=0 or carry less" >&2
    fi
    echo "next: device run(command=\"scripts/gpu_run.sh run\", carry=[\"gpu-bundle\"], timeout_s=600)"
}

# ---------------------------------------------------------------------------------------------
# run

# Seconds left before the run's deadline, capped at $1.
left() {
    local rest=$((start + ${RUN_BUDGET:-540} - $(date +%s)))
    if [ "$rest" -lt "$1" ]; then echo $((rest > 0 ? rest : 0)); else echo "$1"; fi
}
elapsed() { echo $(($(date +%s) - start)); }
note() { printf '%s\t%s\n' "$1" "$2" >>"$out/results.tsv"; }
want() { [[ " $steps " == *" $1 "* ]]; }
say() { echo "[$(printf '%3d' "$(elapsed)")s] $*"; }

# sub LOG CAP CMD...: run CMD (cwd: the checkout) under min(CAP, time left), output to
# $logs/LOG.log and to steps.log; sets $status (124: timed out or no time left).
sub() {
    local log=$1 cap=$2 t
    shift 2
    t=$(left "$cap")
    if [ "$t" -lt 5 ]; then
        echo "===== [$log] skipped, no time left: $*" | tee -a "$logs/$log.log" >>"$out/steps.log"
        status=124
        return 0
    fi
    echo "===== [$log] $* (timeout ${t}s, at ${start:+$(elapsed)}s)" >"$logs/current"
    set +e
    timeout -k 5 "$t" "$@" >>"$logs/current" 2>&1
    status=$?
    set -e
    [ $status -ne 124 ] && [ $status -ne 137 ] || echo "===== [$log] TIMED OUT after ${t}s" >>"$logs/current"
    echo "===== [$log] exit $status" >>"$logs/current"
    cat "$logs/current" >>"$logs/$log.log"
    cat "$logs/current" >>"$out/steps.log"
    return 0
}

# `bash -c "$INSTALL_WHEELS" install DIR WHEEL...` (a program, so that `timeout` can run it): pip
# install --target DIR without an index or dependencies; where pip fails, unpack the wheels into
# DIR (enough for these wheels: no scripts, no entry points).
# shellcheck disable=SC2016 # expanded by that bash
INSTALL_WHEELS='dir=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$dir" "$@" && exit 0
echo "pip install failed: unpacking the wheels into $dir instead"
for w in "$@"; do python3 -m zipfile -e "$w" "$dir" || exit 1; done'

# The examples/sec of the last epoch line of a finetune log; empty if none.
epoch_speed() { sed -nE 's/^epoch [0-9]+\/[0-9]+:.* ([0-9.]+) examples\/sec.*/\1/p' "$1" | tail -1; }
# "loss L, train acc A, test acc T" of the last epoch line.
epoch_line() { sed -nE 's/^epoch ([0-9]+\/[0-9]+): (loss [^,]*, train acc [^,]*, test acc [^,]*),.*/\2/p' "$1" | tail -1; }
# KEY of the last JSON line of a log.
json_key() {
    grep '^{' "$1" 2>/dev/null | tail -1 | python3 -c 'import json, sys
try:
    v = json.load(sys.stdin).get(sys.argv[1])
except ValueError:
    v = None
if isinstance(v, float):
    v = "%.1f" % v if abs(v) >= 100 else "%.4g" % v
print("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)' "$2" 2>/dev/null || true
}
# "bf16", "bf16 (NLI_BERT_CUBLASLT=0: no fused epilogues)", ... for a bench variant.
variant_label() {
    case "$1" in
    *-before) echo "${1%-before} (before: copies, classic attention)" ;;
    *-unfused) echo "${1%-unfused} (NLI_BERT_CUBLASLT=0: no fused epilogues)" ;;
    *-nographs) echo "${1%-nographs} --graphs off (every op launched on its own)" ;;
    *-f32acts) echo "${1%-f32acts} (NLI_BERT_BF16_STORAGE=0: f32 activations)" ;;
    *) echo "$1" ;;
    esac
}

# "family ms (share%), ..." of the last JSON line's step.breakdown (nli-bert bench --breakdown).
breakdown_of() {
    grep '^{' "$1" 2>/dev/null | tail -1 | python3 -c 'import json, sys
try:
    b = (json.load(sys.stdin).get("step") or {}).get("breakdown") or {}
except ValueError:
    b = {}
fams = b.get("families") or []
print("; ".join("%s %.2f ms (%.0f%%%s)" % (f["family"], f["ms_per_step"], 100 * f["share"],
      ", %.1f TFLOP/s" % f["tflops"] if f.get("tflops") else (", %.0f GB/s" % f["gbps"] if f.get("gbps") else ""))
      for f in sorted(fams, key=lambda f: -f["ms_per_step"])))' 2>/dev/null || true
}
# "N captured (M after a changed step), U updates, H us host per update" of the last JSON line's
# step.graphs (nli-bert bench with step graphs), or nothing.
graphs_of() {
    grep '^{' "$1" 2>/dev/null | tail -1 | python3 -c 'import json, sys
try:
    g = (json.load(sys.stdin).get("step") or {}).get("graphs")
except ValueError:
    g = None
if g:
    print("%d captured (%d after a changed step), %d updates, %.0f us host per update, bucket %d"
          % (g["captures"], g["recaptures"], g["updates"], g["host_us_per_update"], g["bucket"]))' 2>/dev/null || true
}
# The last JSON line's step.fused (cuBLASLt epilogues run fused / asked), or nothing.
fused_of() {
    grep '^{' "$1" 2>/dev/null | tail -1 | python3 -c 'import json, sys
try:
    print((json.load(sys.stdin).get("step") or {}).get("fused") or "")
except ValueError:
    pass' 2>/dev/null || true
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else printf "-" }'; }

run() {
    local repo bundle work failed=0
    start=$(date +%s)
    # The checkout on the GPU machine: the current directory if it holds the bundle, else the
    # folder above the bundle.
    if [ -f "gpu-bundle/bin.tar.gz" ]; then
        repo="$(pwd)"
        bundle="$repo/gpu-bundle"
    else
        bundle="$(dirname "$self")"
        repo="$(cd "$bundle/.." && pwd)"
    fi
    [ -f "$bundle/bin.tar.gz" ] || { echo "no gpu-bundle/bin.tar.gz: run 'scripts/gpu_run.sh build' first and carry gpu-bundle" >&2; exit 2; }
    cd "$repo"
    out="${OUT:-$repo/gpu-out}"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    work="$(mktemp -d /tmp/nli-bert-gpu.XXXXXX)"
    # Models (the bench model alone is 128 MB) and unpacked executables: gone at the end, unless
    # KEEP_WORK=1 (the logs are in $OUT/logs.tar.gz).
    work_dir="$work"
    [ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work_dir"' EXIT
    logs="$work/logs"
    mkdir -p "$logs"
    : >"$out/results.tsv"
    : >"$out/steps.log"
    tar -xzf "$bundle/bin.tar.gz" -C "$work"

    local dry="${DRY_RUN:-0}" dev batch epochs psteps pwarm hf_shape small_steps
    steps="${STEPS:-tests finetune bench d2l hf learn criterion}"
    # also available: e2e ncu sanitizer hfc (see the header)
    if [ "$dry" = 1 ]; then
        dev="${DEVICE:-cpu}" batch="${BATCH:-16}" epochs="${EPOCHS:-1}" psteps="${PEER_STEPS:-2}"
        pwarm=1 hf_shape="${HF_SHAPE:-tiny}" small_steps="--max-steps 3"
    else
        dev="${DEVICE:-cuda}" batch="${BATCH:-512}" epochs="${EPOCHS:-2}" psteps="${PEER_STEPS:-30}"
        pwarm=3 hf_shape="${HF_SHAPE:-bert.base}" small_steps=""
    fi
    local nproc_
    nproc_="$(nproc)"

    # Paths compiled into the executables (fixtures, CARGO_BIN_EXE_nli-bert) point at the build
    # machine's checkout: make that path lead here.
    local build_root
    build_root="$(awk '$1 == "build_root" { print $2 }' "$bundle/manifest.txt")"
    if [ -n "$build_root" ] && [ ! -e "$build_root" ]; then
        { mkdir -p "$(dirname "$build_root")" && ln -s "$repo" "$build_root"; } || true
    fi
    if [ ! -e "$repo/target/release/nli-bert" ]; then
        mkdir -p "$repo/target/release"
        cp "$work/nli-bert" "$repo/target/release/nli-bert"
    fi
    local bin="$work/nli-bert" data="$bundle/data"

    # CUDA libraries: the toolkit's lib64 is probed by the program; add the PyPI wheels' folders.
    local libdirs="" d sp
    for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true); do
        for d in "$sp/nvidia/cu13/lib" "$sp/nvidia/cublas/lib" "$sp/nvidia/cuda_nvrtc/lib"; do
            [ -d "$d" ] && libdirs="${libdirs:+$libdirs:}$d"
        done
    done
    export NLI_BERT_CUDA_LIB_DIR="${NLI_BERT_CUDA_LIB_DIR:-$libdirs}"
    if [ "$dry" != 1 ]; then
        export NLI_BERT_REQUIRE_CUDA=1 NLI_BERT_REQUIRE_NVRTC=1
    fi
    export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
    export NLI_BERT_HOME="$work/home" CRITERION_HOME="$work/criterion"

    local card
    card="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
    [ -n "$card" ] || card="no GPU seen by nvidia-smi ($(uname -m), $nproc_ cores)"
    note date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    note card "$card"
    note bundle "$(awk '$1 == "git" { print $2 }' "$bundle/manifest.txt") built $(awk '$1 == "date" { print $2 }' "$bundle/manifest.txt")"
    note steps "$steps"
    note batch "$batch"
    note epochs "$epochs"
    note peer_steps "$psteps"
    [ "$dry" = 1 ] && note dry_run "1 (DEVICE=$dev): plumbing only, figures mean nothing"
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(uname -a)"
        echo "card: $card"
        echo "NLI_BERT_CUDA_LIB_DIR=$NLI_BERT_CUDA_LIB_DIR"
        echo "--- bundle"
        cat "$bundle/manifest.txt"
        echo "--- nvidia-smi"
        nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
        echo "--- nvcc"
        nvcc --version 2>&1 || echo "(no nvcc)"
        echo "--- libraries"
        # (`|| true`: a missing last file must not end the run under `set -e`)
        for d in /usr/local/cuda/lib64/lib{cublas,cublasLt,nvrtc}.so*; do [ -e "$d" ] && echo "$d" || true; done
        echo "$NLI_BERT_CUDA_LIB_DIR" | tr ':' '\n' | while read -r d; do [ -n "$d" ] && ls "$d" || true; done
        echo "--- python"
        command -v python3 && python3 --version
        python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || true
        python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|safetensors|huggingface.hub|numpy|regex) ' || true
        echo "--- cpu"
        nproc
        grep -m1 'model name' /proc/cpuinfo || true
        echo "--- nli-bert --help"
        "$bin" --help 2>&1 || true
    } >"$out/env.txt" 2>&1
    say "card: $card; steps: $steps; dry run: $dry; out: $out"

    # Python: the bundled wheels into /tmp (d2l always; transformers when HF_FROM says so).
    local site="$work/site" site_hf="$work/site-hf" py_ok=0 hf_path="" hf_from="${HF_FROM:-auto}"
    if compgen -G "$bundle/wheels/*.whl" >/dev/null; then
        sub setup 120 bash -c "$INSTALL_WHEELS" install "$site" "$bundle"/wheels/*.whl
        [ $status -eq 0 ] && PYTHONPATH="$site" python3 -c 'import sys; sys.path.insert(0, "scripts"); import d2l_seed' >>"$logs/setup.log" 2>&1 && py_ok=1
    fi
    note python_d2l "$([ $py_ok = 1 ] && echo ok || echo 'unavailable (see setup.log)')"
    local pyp="$site${PYTHONPATH:+:$PYTHONPATH}"
    if [ "$hf_from" != bundle ] && python3 -c 'import transformers, tokenizers' >/dev/null 2>&1; then
        hf_path="$pyp"
        note python_hf "the machine's transformers $(python3 -c 'import transformers; print(transformers.__version__)' 2>/dev/null)"
    elif [ "$hf_from" != system ] && compgen -G "$bundle/wheels-hf/*.whl" >/dev/null; then
        sub setup 120 bash -c "$INSTALL_WHEELS" install "$site_hf" "$bundle"/wheels-hf/*.whl
        if [ $status -eq 0 ] && PYTHONPATH="$site_hf:$pyp" python3 -c 'import transformers' >>"$logs/setup.log" 2>&1; then
            hf_path="$site_hf:$pyp"
            note python_hf "bundled $(cd "$bundle/wheels-hf" && echo *.whl)"
        fi
    fi
    [ -n "$hf_path" ] || note python_hf "unavailable: the hf step is skipped"

    local kind name n pm

    # ---- tests
    : >"$out/tests.log"
    if want tests; then
        local tests_start tleft
        tests_start=$(date +%s)
        while read -r kind name n; do
            tleft=$((tests_start + ${TESTS_BUDGET:-180} - $(date +%s)))
            tleft=$(left $((tleft < ${TEST_TIMEOUT:-150} ? tleft : ${TEST_TIMEOUT:-150})))
            if [ "$tleft" -lt 5 ]; then
                echo "$name: SKIPPED (no time left)" | tee -a "$out/tests.log" >>"$logs/tests-summary"
                failed=1
                continue
            fi
            echo "===== $name (filter: cuda nvrtc; ${n:-?} tests; timeout ${tleft}s)" >>"$out/tests.log"
            set +e
            timeout -k 5 "$tleft" "$work/$name" cuda nvrtc --nocapture >>"$out/tests.log" 2>&1
            status=$?
            set -e
            echo "$name: $([ $status -eq 0 ] && echo ok || echo "FAILED (exit $status$([ $status -eq 124 ] && echo ', timed out'))")" >>"$logs/tests-summary"
            [ $status -eq 0 ] || failed=1
        done < <(awk '$1 == "test" { print $1, $2, $3 }' "$bundle/manifest.txt")
        note tests "$(grep -hE '^test result:' "$out/tests.log" | awk '{p+=$4; f+=$6; i+=$8} END {print p+0 " passed, " f+0 " failed, " i+0 " ignored"}')"
        note tests_by_executable "$(paste -sd ';' "$logs/tests-summary" 2>/dev/null | sed 's/;/; /g')"
        note tests_skipped_notices "$(grep -ciE 'skip' "$out/tests.log" || true)"
        say "tests: $(awk -F'\t' '$1 == "tests" { print $2 }' "$out/results.tsv")"
    fi

    # ---- finetune: our bert.small on the card
    local model_small="$work/bert.small" have_small=0 ft_prec=bf16
    if want finetune || want d2l; then
        if [ $py_ok = 1 ] && [ -f "$data/snli_dev.tsv" ]; then
            sub model 120 env PYTHONPATH="$pyp" python3 scripts/make_bench_model.py --out "$model_small" --data "$data/snli_dev.tsv"
            [ $status -eq 0 ] && have_small=1
        fi
        note bench_model "$([ $have_small = 1 ] && tail -3 "$logs/model.log" | grep -m1 '^wrote' || echo 'not made: finetune falls back to --model scratch (bert.small sizes)')"
    fi
    if want finetune && [ -f "$data/snli_dev.tsv" ]; then
        local m_args=(--model "$model_small" --heads 4)
        [ $have_small = 1 ] || m_args=(--model scratch --hidden 256 --ffn 512 --heads 4 --layers 2)
        local prec o_args
        for prec in f32 $ft_prec; do
            o_args=()
            [ "$prec" != f32 ] || o_args=(--out "$work/ft-$prec") # saved, then evaluated
            # shellcheck disable=SC2086 # small_steps is a word list
            sub "finetune-$prec" 150 "$bin" finetune "${m_args[@]}" --data "$data/snli_dev.tsv" \
                --test-data "$data/sick_test.tsv" --device "$dev" --precision "$prec" --batch-size "$batch" \
                --epochs "$epochs" $small_steps "${o_args[@]}"
            note "ours_small_finetune_$prec" "$(epoch_speed "$logs/finetune-$prec.log")"
            note "ours_small_finetune_${prec}_result" "exit $status; $(epoch_line "$logs/finetune-$prec.log")"
            say "finetune $prec: exit $status, $(epoch_speed "$logs/finetune-$prec.log") examples/s"
        done
        if [ -f "$work/ft-f32/model.safetensors" ]; then
            sub eval 60 "$bin" eval --model "$work/ft-f32" --data "$data/sick_test.tsv" --device "$dev"
            note eval_saved_model "exit $status; $(grep -m1 -E 'examples: accuracy' "$logs/eval.log" || true)"
        fi
    fi
    if [ -n "${NLI_BERT_GPU_EXTRA:-}" ]; then
        local extra
        read -r -a extra <<<"$NLI_BERT_GPU_EXTRA"
        sub extra 300 "$bin" "${extra[@]}"
        note extra "nli-bert ${extra[*]}: exit $status"
    fi

    # ---- bench: nli-bert bench
    if want bench; then
        local b_args=(--json --warmup 3) shape prec v h
        if [ -f "$data/snli_dev.tsv" ]; then
            b_args+=(--data "$data/snli_dev.tsv" --repeat 1)
        fi
        local bsteps
        for shape in bert.small bert.base; do
            bsteps=30
            [ "$shape" = bert.base ] && bsteps=10
            if [ "$dry" = 1 ]; then
                bsteps=3
                [ "$shape" = bert.base ] && shape=tiny
            fi
            local variant v_args
            local v_env
            for variant in f32 $ft_prec $ft_prec-f32acts $ft_prec-nographs $ft_prec-unfused $ft_prec-before; do
                prec="$variant"
                # bf16-before: the bf16 engine as first measured (conversion kernels into bf16
                # copies before each GEMM, the f32 attention kernels); bf16-unfused: today's
                # engine without cuBLASLt (plain cuBLAS GEMMs, separate bias / ReLU / bias-gradient
                # kernels); bf16-nographs: every op launched on its own instead of step graphs;
                # bf16-f32acts: activations stored in f32 (the products round inside cuBLAS)
                v_args=(--precision "${variant%-*}") v_env=()
                case "$variant" in
                *-before)
                    v_args+=(--attention classic)
                    v_env=(NLI_BERT_BF16_GEMM=copies)
                    ;;
                *-unfused) v_env=(NLI_BERT_CUBLASLT=0) ;;
                *-f32acts) v_env=(NLI_BERT_BF16_STORAGE=0) ;;
                *-nographs) v_args+=(--graphs off) ;;
                esac
                [ "$dry" = 1 ] && [ "$dev" != emu ] && [ "$variant" != f32 ] && continue # bf16 needs a GPU (or the emulator)
                sub "bench-$shape-$prec" 60 env "${v_env[@]}" "$bin" bench --shape "$shape" --device "$dev" "${v_args[@]}" \
                    --batch-size "$batch" --steps "$bsteps" --breakdown "${b_args[@]}"
                note "ours_bench_${shape}_${prec}_breakdown" "$(breakdown_of "$logs/bench-$shape-$prec.log")"
                note "ours_bench_${shape}_${prec}_graphs" "$(graphs_of "$logs/bench-$shape-$prec.log")"
                note "ours_bench_${shape}_${prec}_fused" "$(fused_of "$logs/bench-$shape-$prec.log")"
                v="$(json_key "$logs/bench-$shape-$prec.log" examples_per_s)"
                [ -n "$v" ] || v="$(sed -nE 's/.* ([0-9]+(\.[0-9]+)?) examples\/s(ec)?.*/\1/p' "$logs/bench-$shape-$prec.log" | tail -1)"
                note "ours_bench_${shape}_$prec" "$v"
                h="$(json_key "$logs/bench-$shape-$prec.log" ceilings)"
                note "ours_bench_${shape}_${prec}_info" "exit $status; TFLOP/s $(json_key "$logs/bench-$shape-$prec.log" tflops); GB/s $(json_key "$logs/bench-$shape-$prec.log" gbps); tokens/s $(json_key "$logs/bench-$shape-$prec.log" tokens_per_s)${h:+; card ceilings $h}"
                say "bench $shape $prec: exit $status, $v examples/s"
            done
        done
    fi

    # ---- d2l: the seed's PyTorch code on the card
    if want d2l && [ $have_small = 1 ]; then
        local pad
        for pad in fixed dynamic; do
            sub "d2l-$pad" 90 env PYTHONPATH="$pyp" python3 scripts/bench_cpu_peer.py --model "$model_small" \
                --data "$data/snli_dev.tsv" --device "$dev" --batch-size "$batch" --steps "$psteps" \
                --warmup "$pwarm" --threads "$nproc_" --padding "$pad" --json
            note "d2l_$pad" "$(json_key "$logs/d2l-$pad.log" examples_per_sec)"
            pm="$(json_key "$logs/d2l-$pad.log" peak_mem_mib)"
            note "d2l_${pad}_peer" "exit $status; $(json_key "$logs/d2l-$pad.log" peer); mean len fed $(json_key "$logs/d2l-$pad.log" mean_tokens)${pm:+; peak memory $pm MiB}"
            say "d2l peer ($pad): exit $status, $(json_key "$logs/d2l-$pad.log" examples_per_sec) examples/s"
        done
    elif want d2l; then
        note d2l_fixed "skipped: no bench model (d2l wheel or data missing; see setup.log, model.log)"
    fi

    # ---- hf: transformers bf16 peer and ours on the same bert.base-shaped model
    if want hf && [ -n "$hf_path" ] && [ -f "$data/snli_dev.tsv" ]; then
        local hf_dir="$work/hf-$hf_shape" hf_prec=bf16
        sub hf 150 env PYTHONPATH="$hf_path" python3 scripts/bench_hf_peer.py --vocab tests/fixtures/hf/vocab.txt \
            --data "$data/snli_dev.tsv" --shape "$hf_shape" --device "$dev" --precision "$hf_prec" \
            --batch-size "$batch" --steps "$psteps" --warmup "$pwarm" --save-model "$hf_dir" --json
        note "hf_$hf_shape" "$(json_key "$logs/hf.log" examples_per_sec)"
        pm="$(json_key "$logs/hf.log" peak_mem_mib)"
        note "hf_${hf_shape}_peer" "exit $status; $(json_key "$logs/hf.log" peer); $(json_key "$logs/hf.log" precision), attention $(json_key "$logs/hf.log" attn_implementation), mean padded len $(json_key "$logs/hf.log" mean_padded_len)${pm:+, peak memory $pm MiB}"
        say "hf peer ($hf_shape): exit $status, $(json_key "$logs/hf.log" examples_per_sec) examples/s"
        if [ -f "$hf_dir/config.json" ]; then
            local prec
            for prec in f32 $ft_prec; do
                # shellcheck disable=SC2086
                sub "ours-$hf_shape-$prec" 150 "$bin" finetune --model "$hf_dir" --data "$data/snli_dev.tsv" \
                    --device "$dev" --precision "$prec" --batch-size "$batch" --epochs "$epochs" $small_steps \
                    --lr 5e-5 --adamw 0.01 --dropout 0.1
                note "ours_${hf_shape}_finetune_$prec" "$(epoch_speed "$logs/ours-$hf_shape-$prec.log")"
                note "ours_${hf_shape}_finetune_${prec}_result" "exit $status; $(epoch_line "$logs/ours-$hf_shape-$prec.log")"
                say "ours ($hf_shape, $prec): exit $status, $(epoch_speed "$logs/ours-$hf_shape-$prec.log") examples/s"
            done
        fi
    elif want hf; then
        note "hf_$hf_shape" "skipped: no transformers (see setup.log) or no data"
    fi

    # ---- learn: a scratch model learns SICK on the card
    if want learn && [ -f "$data/sick_train.tsv" ]; then
        # shellcheck disable=SC2046
        sub learn 90 "$bin" finetune --model scratch --data "$data/sick_train.tsv" --test-data "$data/sick_test.tsv" \
            --batch-size 32 --lr 3e-4 --epochs "$([ "$dry" = 1 ] && echo 1 || echo 10)" --device "$dev" \
            $([ "$dry" = 1 ] && echo --max-steps 20) --out "$work/ft-learn"
        note learn "exit $status; $(epoch_line "$logs/learn.log"); $(epoch_speed "$logs/learn.log") examples/s (CPU, same command: test acc 0.639)"
        say "learn: $(epoch_line "$logs/learn.log")"
        # the same in bf16 (issue 12: bf16 becomes the default once it learns like f32, within
        # 0.5 point, and is faster)
        if [ "$dry" != 1 ]; then
            sub learn-bf16 90 "$bin" finetune --model scratch --data "$data/sick_train.tsv" --test-data "$data/sick_test.tsv" \
                --batch-size 32 --lr 3e-4 --epochs 10 --device "$dev" --precision bf16 --out "$work/ft-learn-bf16"
            note learn_bf16 "exit $status; $(epoch_line "$logs/learn-bf16.log"); $(epoch_speed "$logs/learn-bf16.log") examples/s"
            say "learn bf16: $(epoch_line "$logs/learn-bf16.log")"
        fi
    fi

    # ---- dp: --device cuda:0 and --device cuda (every GPU: data parallel with NCCL when there
    # are several) on the same run; on one GPU the two must print the same epochs
    if want learn && [ -f "$data/sick_train.tsv" ] && [ "$dev" = cuda ] && [ "$dry" != 1 ]; then
        local d same
        for d in cuda:0 cuda; do
            sub "dp-${d/:/}" 60 "$bin" finetune --model scratch --data "$data/sick_train.tsv" \
                --test-data "$data/sick_test.tsv" --batch-size 32 --lr 3e-4 --epochs 2 --device "$d" \
                --out "$work/ft-dp-${d/:/}"
        done
        same=no
        cmp -s <(grep -o '"loss":[^,]*' "$work/ft-dp-cuda0/metrics.jsonl" 2>/dev/null) \
            <(grep -o '"loss":[^,]*' "$work/ft-dp-cuda/metrics.jsonl" 2>/dev/null) && same=yes
        same="$(nvidia-smi -L 2>/dev/null | wc -l) GPU(s); same losses: $same; cuda:0: $(epoch_line "$logs/dp-cuda0.log"); cuda: $(epoch_line "$logs/dp-cuda.log")"
        note dp "$same"
        say "dp: $same"
    fi

    # ---- e2e: 5 epochs over a 550k-pair SNLI-format file, tested on snli_dev (~10k pairs), wall
    # time from process start to exit
    if want e2e && [ -f "$data/snli_dev.tsv" ]; then
        local rows=550152 e2e_epochs=5 t_start t_end
        [ "$dry" = 1 ] && rows=2000 e2e_epochs=1
        sub gen 60 "$work/gen_snli" "$work/snli_train.txt" "$rows" 0
        if [ -f "$work/snli_train.txt" ]; then
            local e_args=(--model "$model_small" --heads 4)
            [ $have_small = 1 ] || e_args=(--model scratch --hidden 256 --ffn 512 --heads 4 --layers 2)
            t_start=$(date +%s.%N)
            sub e2e 150 "$bin" finetune "${e_args[@]}" --data "$work/snli_train.txt" --test-data "$data/snli_dev.tsv" \
                --device "$dev" --precision "$([ "$dry" = 1 ] && echo f32 || echo "$ft_prec")" --batch-size "$batch" \
                --epochs "$e2e_epochs"
            t_end=$(date +%s.%N)
            note e2e_wall_s "$(python3 -c "print(round($t_end - $t_start, 2))")"
            note e2e "exit $status; $(grep -m1 -oE 'on (cpu|emu|cuda)[^)]*\)?' "$logs/e2e.log" | tail -1); $rows pairs x $e2e_epochs epochs; last epoch $(epoch_speed "$logs/e2e.log") examples/s; $(epoch_line "$logs/e2e.log") (target < 15 s wall)"
            say "e2e: exit $status, $(awk -F'\t' '$1 == "e2e_wall_s" { print $2 }' "$out/results.tsv") s wall"
        fi
    fi

    # ---- ncu: per-kernel time of a few bench steps, both shapes (the log holds the summary)
    if want ncu; then
        if command -v ncu >/dev/null 2>&1; then
            local nshape
            for nshape in bert.small bert.base; do
                [ "$dry" = 1 ] && nshape=tiny
                sub "ncu-$nshape" 120 ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
                    "$bin" bench --shape "$nshape" --device "$dev" --precision "$ft_prec" --batch-size "$batch" --steps 2 --warmup 1
                note "ncu_$nshape" "exit $status; per-kernel summary in logs/ncu-$nshape.log"
                [ "$dry" = 1 ] && break
            done
        else
            note ncu "skipped: no ncu on PATH"
        fi
    fi

    # ---- sanitizer: compute-sanitizer's four tools on one tiny training step, both precisions
    if want sanitizer; then
        if command -v compute-sanitizer >/dev/null 2>&1; then
            local tool sprec errs
            for tool in memcheck racecheck synccheck initcheck; do
                for sprec in f32 bf16; do
                    sub "sanitizer-$tool-$sprec" 60 compute-sanitizer --tool "$tool" --error-exitcode 9 \
                        "$bin" bench --shape tiny --device "$dev" --precision "$sprec" --batch-size 16 --steps 1 --warmup 0
                    errs="$(grep -hoE 'ERROR SUMMARY: [0-9]+ error' "$logs/sanitizer-$tool-$sprec.log" | tail -1)"
                    note "sanitizer_${tool}_$sprec" "exit $status; ${errs:-no summary line}"
                    [ $status -eq 0 ] || failed=1
                done
            done
        else
            note sanitizer "skipped: no compute-sanitizer on PATH"
        fi
    fi

    # ---- hfc: the HF peer again with torch.compile (the stronger bert.base peer)
    if want hfc && [ -n "$hf_path" ] && [ -f "$data/snli_dev.tsv" ]; then
        sub hfc 240 env PYTHONPATH="$hf_path" python3 scripts/bench_hf_peer.py --vocab tests/fixtures/hf/vocab.txt \
            --data "$data/snli_dev.tsv" --shape "$hf_shape" --device "$dev" --precision bf16 \
            --batch-size "$batch" --steps "$psteps" --warmup $((pwarm + 5)) --compile --json
        note "hfc_$hf_shape" "$(json_key "$logs/hfc.log" examples_per_sec)"
        note "hfc_${hf_shape}_peer" "exit $status; $(json_key "$logs/hfc.log" peer); torch.compile $(json_key "$logs/hfc.log" compiled)"
        say "hf peer with torch.compile ($hf_shape): exit $status, $(json_key "$logs/hfc.log" examples_per_sec) examples/s"
    fi

    # ---- criterion benches, with what is left
    : >"$out/criterion.log"
    if want criterion; then
        local bargs
        read -r -a bargs <<<"${BENCH_ARGS:---warm-up-time 1 --measurement-time 3}"
        local filter="${BENCH_FILTER-cuda}"
        while read -r kind name; do
            sub criterion 90 "$work/$name" --bench ${filter:+"$filter"} "${bargs[@]}"
            note "criterion_$name" "exit $status"
        done < <(awk '$1 == "bench" { print $1, $2 }' "$bundle/manifest.txt")
        grep -E '^(op|train_step)/|time:|thrpt:' "$logs/criterion.log" >"$out/criterion.log" 2>/dev/null || true
    fi

    summarize "$out" >"$out/summary.txt"
    cp "$out/results.tsv" "$logs/"
    local f
    for f in "$work"/ft-*/metrics.jsonl "$work"/ft-*/curves.svg; do
        [ -f "$f" ] && cp "$f" "$logs/$(basename "$(dirname "$f")").$(basename "$f")"
    done
    rm -f "$logs/current"
    tar -C "$work" -czf "$out/logs.tar.gz" logs
    say "done; files in $out: $(cd "$out" && echo *)"
    echo
    cat "$out/summary.txt"
    exit $failed
}

# summary.txt from results.tsv.
summarize() {
    local r="$1/results.tsv"
    get() { awk -F'\t' -v k="$1" '$1 == k { v = $2 } END { print v }' "$r"; }
    row() { printf '  %-62s %12s  %s\n' "$1" "${2:--}" "${3:-}"; }
    # The first non-empty value of the keys given.
    first() {
        local k v
        for k in "$@"; do
            v="$(get "$k")"
            [ -z "$v" ] || { echo "$v"; return 0; }
        done
    }
    local s ours d2l_f d2l_d hf base prec
    echo "nli-bert GPU session, $(get date)"
    echo "card:    $(get card)"
    echo "bundle:  $(get bundle)"
    [ -z "$(get dry_run)" ] || echo "DRY RUN: $(get dry_run)"
    if [ -n "$(get tests)" ]; then
        echo "tests:   $(get tests)"
        echo "         $(get tests_by_executable)"
        [ "$(get tests_skipped_notices)" = 0 ] ||
            echo "         $(get tests_skipped_notices) lines of tests.log mention a skip (expected only in a dry run)"
    else
        echo "tests:   not run (STEPS=$(get steps))"
    fi
    echo "python:  d2l $(get python_d2l); transformers: $(get python_hf)"
    echo
    if [ -n "$(first ours_small_finetune_f32_result ours_bench_bert.small_f32_info d2l_fixed_peer d2l_fixed)" ]; then
        echo "bert.small shape (d2l's, random weights, 60,005 tokens), snli_dev.tsv, batch $(get batch)  [examples/s]"
        for prec in f32 bf16; do
            s="$(get "ours_small_finetune_$prec")"
            [ -n "$s$(get "ours_small_finetune_${prec}_result")" ] || continue
            row "nli-bert finetune --precision $prec (packed), last epoch" "$s"
        done
        for prec in f32 bf16 bf16-f32acts bf16-nographs bf16-unfused bf16-before; do
            [ -z "$(get "ours_bench_bert.small_${prec}_info")" ] || row "nli-bert bench --shape bert.small --precision $(variant_label "$prec")" "$(get "ours_bench_bert.small_$prec")"
        done
        ours="$(first ours_bench_bert.small_bf16 ours_bench_bert.small_f32 ours_small_finetune_bf16 ours_small_finetune_f32)"
        d2l_f="$(get d2l_fixed)"
        d2l_d="$(get d2l_dynamic)"
        row "d2l PyTorch peer, fp32, padded to 128 (the book)" "$d2l_f" "ours/peer $(ratio "$ours" "$d2l_f")  (target >= 10x)"
        row "d2l PyTorch peer, fp32, dynamic padding" "$d2l_d" "ours/peer $(ratio "$ours" "$d2l_d")"
        echo "  peer: $(get d2l_fixed_peer)"
    else
        echo "bert.small shape: not run (STEPS=$(get steps))"
    fi
    echo
    echo "HF BERT shape (random, bert-base-uncased vocab), snli_dev.tsv, batch $(get batch)  [examples/s]"
    base=""
    for s in bert.base tiny bert.small; do
        [ -n "$(get "hf_${s}")$(get "hf_${s}_peer")" ] && base=$s
    done
    if [ -n "$base" ]; then
        for prec in f32 bf16; do
            s="$(get "ours_${base}_finetune_$prec")"
            [ -n "$s$(get "ours_${base}_finetune_${prec}_result")" ] || continue
            row "nli-bert finetune --precision $prec ($base), last epoch" "$s"
        done
        for prec in f32 bf16 bf16-f32acts bf16-nographs bf16-unfused bf16-before; do
            [ -z "$(get "ours_bench_bert.base_${prec}_info")" ] || row "nli-bert bench --shape bert.base --precision $(variant_label "$prec") (d2l's block)" "$(get "ours_bench_bert.base_$prec")"
        done
        # The same model as the peer's first: our finetune of its saved initial weights.
        ours="$(first "ours_${base}_finetune_bf16" "ours_${base}_finetune_f32" ours_bench_bert.base_bf16 ours_bench_bert.base_f32)"
        hf="$(get "hf_$base")"
        row "HF transformers, bf16 autocast, dynamic padding ($base)" "$hf" "ours/peer $(ratio "$ours" "$hf")  (target >= 3x)"
        echo "  peer: $(get "hf_${base}_peer")"
        if [ -n "$(get "hfc_${base}")$(get "hfc_${base}_peer")" ]; then
            row "HF transformers + torch.compile ($base)" "$(get "hfc_$base")" "ours/peer $(ratio "$ours" "$(get "hfc_$base")")  (target >= 2x)"
            echo "  peer: $(get "hfc_${base}_peer")"
        fi
    elif [[ " $(get steps) " == *" hf "* ]]; then
        echo "  (hf step not run: $(get python_hf))"
    else
        echo "  (hf step not run: STEPS=$(get steps))"
    fi
    echo
    [ -z "$(first ours_small_finetune_f32_result learn)" ] || echo "training on the card:"
    for prec in f32 bf16; do
        s="$(get "ours_small_finetune_${prec}_result")"
        [ -z "$s" ] || echo "  bert.small $prec, $(get epochs) epoch(s) on snli_dev, tested on sick_test: $s"
    done
    [ -z "$(get eval_saved_model)" ] || echo "  eval of the saved f32 model on sick_test: $(get eval_saved_model)"
    [ -z "$(get learn)" ] || echo "  scratch on SICK (batch 32, lr 3e-4): $(get learn)"
    [ -z "$(get learn_bf16)" ] || echo "  the same in bf16: $(get learn_bf16)"
    [ -z "$(get dp)" ] || echo "  --device cuda:0 vs cuda (issue 14): $(get dp)"
    [ -z "$(get ours_bench)" ] || echo "  $(get ours_bench)"
    [ -z "$(get e2e)" ] || echo "  end to end: $(get e2e_wall_s) s wall; $(get e2e)"
    echo
    if [ -n "$(awk -F'\t' '$1 ~ /_breakdown$/ && $2 != ""' "$r")" ]; then
        echo "where a step's time goes (nli-bert bench --breakdown, ms per step, largest first):"
        awk -F'\t' '$1 ~ /^ours_bench_.*_breakdown$/ && $2 != "" { k = $1; sub(/^ours_bench_/, "", k); sub(/_breakdown$/, "", k); printf "  %s: %s\n", k, $2 }' "$r"
        echo
    fi
    if [ -n "$(awk -F'\t' '$1 ~ /_graphs$/ && $2 != ""' "$r")" ]; then
        echo "step graphs (nli-bert bench):"
        awk -F'\t' '$1 ~ /^ours_bench_.*_graphs$/ && $2 != "" { k = $1; sub(/^ours_bench_/, "", k); sub(/_graphs$/, "", k); printf "  %s: %s\n", k, $2 }' "$r"
        echo
    fi
    if [ -n "$(awk -F'\t' '$1 ~ /_fused$/ && $2 != ""' "$r")" ]; then
        echo "fused products (cuBLASLt epilogue: run fused / asked; the rest ran as cuBLAS + our kernels):"
        awk -F'\t' '$1 ~ /^ours_bench_.*_fused$/ && $2 != "" { k = $1; sub(/^ours_bench_/, "", k); sub(/_fused$/, "", k); printf "  %s: %s\n", k, $2 }' "$r"
        echo
    fi
    if [ -n "$(awk -F'\t' '$1 ~ /^(sanitizer|ncu)/' "$r")" ]; then
        echo "checks:"
        awk -F'\t' '$1 ~ /^(sanitizer|ncu)/ { printf "  %s: %s\n", $1, $2 }' "$r"
        echo
    fi
    echo "ratios: bert.small uses nli-bert bench when present (bf16, else f32), else finetune's last epoch;"
    echo "the HF row uses our finetune of the peer's own initial model (bf16, else f32), else nli-bert bench."
    echo "finetune figures are the last epoch's (d2l's formula, train steps only); bench's and the peers' are"
    echo "over timed steps after warm-up (peers: $(get peer_steps) steps), device synchronised."
    [ -z "$(get ours_bench_bert.small_f32_info)" ] || echo "bench details: $(awk -F'\t' '$1 ~ /^ours_bench_.*_info$/ { printf "\n  %s: %s", $1, $2 }' "$r")"
    echo "logs: steps.log, tests.log, env.txt, logs.tar.gz; all values: results.tsv"
}

main() {
    case "$mode" in
        build) build ;;
        run) run ;;
        *)
            sed -n '2,/^set -euo/p' "$self" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 2
            ;;
    esac
}

# One line, so that bash has read the whole file before running any of it.
main "$@"; exit $?
