#!/usr/bin/env bash
# Real-GPU runs without a Rust toolchain on the GPU machine: build the test and bench executables
# here, carry them there, run the CUDA/NVRTC tests and the benches, bring the logs back.
#
#   scripts/gpu_run.sh build      (here) cargo test --release --no-run + cargo bench --no-run +
#                                 the release nli-bert binary; keeps the test executables that
#                                 hold `cuda` or `nvrtc` tests, strips their debug info and packs
#                                 everything into gpu-bundle/ (git-ignored): bin.tar.gz,
#                                 manifest.txt, run.sh (a copy of this script). Prints its size:
#                                 the device tool carries at most 64 MiB with the working tree.
#   scripts/gpu_run.sh run        (there; also gpu-bundle/run.sh) unpacks the bundle to /tmp and
#                                 runs each test executable filtered to `cuda nvrtc` with
#                                 NLI_BERT_REQUIRE_CUDA=1 and NLI_BERT_REQUIRE_NVRTC=1 (a missing
#                                 GPU or NVRTC fails instead of skipping), then the benches. Logs
#                                 go to $OUT (default ./gpu-out): env.txt, tests.log, bench.log,
#                                 extra.log, summary.txt. Exit status 1 if a test failed.
#
# With the session's device tool (no GPU here; the machine has CUDA 13.0, driver 580, PyTorch):
#   1. here:   scripts/gpu_run.sh build
#   2. device: run(command="scripts/gpu_run.sh run", carry=["gpu-bundle"], timeout_s=600)
#   3. read summary.txt / tests.log / bench.log under the reply's files_at; put the numbers in
#      BENCHMARKS.md with the card's name (env.txt) and the date.
#
# Knobs for `run` (environment): RUN_BUDGET (s for the whole run, default 540; each step gets
# what is left), TEST_TIMEOUT (s per test executable, default 240), BENCH_TIMEOUT (s per bench
# executable, default 240), BENCH_ARGS (criterion arguments, default
# `--warm-up-time 1 --measurement-time 3`), BENCH_FILTER (criterion filter, default all),
# NLI_BERT_GPU_EXTRA (arguments for one extra `nli-bert` command, e.g. a finetune; log in
# extra.log). Tests that read fixtures through the build machine's path (CARGO_MANIFEST_DIR) or
# run the `nli-bert` binary (CARGO_BIN_EXE_nli-bert) work because `run` links that path to the
# checkout when it does not exist there and puts the bundled binary under target/release/.
set -euo pipefail

mode="${1:-}"
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
if [ -z "$mode" ] && [ -f "$(dirname "$self")/bin.tar.gz" ]; then
    mode=run # gpu-bundle/run.sh with no argument
fi

build() {
    cd "$(dirname "$self")/.."
    local root bundle
    root="$(pwd)"
    bundle="$root/gpu-bundle"
    stage="$(mktemp -d)"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/bin"

    echo "== cargo build --release --bin nli-bert"
    cargo build --release --bin nli-bert
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

    local kind name exe kept=0
    : >"$stage/manifest.files"
    while IFS=$'\t' read -r kind name exe; do
        if [ "$kind" = test ]; then
            # Keep only executables with tests this run will select.
            if ! "$exe" --list --format terse 2>/dev/null | grep -Eq '(cuda|nvrtc).*: test$'; then
                continue
            fi
        fi
        strip --strip-debug -o "$stage/bin/$kind-$name" "$exe"
        echo "$kind $kind-$name" >>"$stage/manifest.files"
        kept=$((kept + 1))
    done <"$stage/exes.tsv"
    strip --strip-debug -o "$stage/bin/nli-bert" "$root/target/release/nli-bert"

    rm -rf "$bundle"
    mkdir -p "$bundle"
    tar -C "$stage/bin" -cf - . | gzip -9 >"$bundle/bin.tar.gz"
    {
        echo "build_root $root"
        echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
        echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "rustc $(rustc --version)"
        cat "$stage/manifest.files"
    } >"$bundle/manifest.txt"
    cp "$self" "$bundle/run.sh"
    chmod +x "$bundle/run.sh"

    echo "== gpu-bundle: $kept test/bench executables + nli-bert"
    sed 's/^/   /' "$bundle/manifest.txt"
    du -sh "$bundle"
    local bytes
    bytes=$(du -sb "$bundle" | cut -f1)
    if [ "$bytes" -gt $((56 * 1024 * 1024)) ]; then
        echo "warning: gpu-bundle is $((bytes / 1024 / 1024)) MiB; with the working tree it may exceed the 64 MiB the device tool carries" >&2
    fi
    echo "next: device run(command=\"scripts/gpu_run.sh run\", carry=[\"gpu-bundle\"], timeout_s=600)"
}

# Seconds left before the run's deadline (RUN_BUDGET, default 540 s: the device tool stops a
# command at 600 s), capped at $1.
left() {
    local rest=$((start + ${RUN_BUDGET:-540} - $(date +%s)))
    [ "$rest" -lt "$1" ] && echo $((rest > 1 ? rest : 1)) || echo "$1"
}

run() {
    local repo bundle out work failed=0
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
    out="${OUT:-$repo/gpu-out}"
    mkdir -p "$out"
    work="$(mktemp -d /tmp/nli-bert-gpu.XXXXXX)"
    tar -xzf "$bundle/bin.tar.gz" -C "$work"

    # Paths compiled into the executables (fixtures, CARGO_BIN_EXE_nli-bert) point at the build
    # machine's checkout: make that path lead here.
    local build_root
    build_root="$(awk '$1 == "build_root" { print $2 }' "$bundle/manifest.txt")"
    if [ -n "$build_root" ] && [ ! -e "$build_root" ]; then
        mkdir -p "$(dirname "$build_root")" && ln -s "$repo" "$build_root" || true
    fi
    if [ ! -e "$repo/target/release/nli-bert" ]; then
        mkdir -p "$repo/target/release"
        cp "$work/nli-bert" "$repo/target/release/nli-bert"
    fi

    # CUDA libraries: the toolkit's lib64 is probed by the program; add the PyPI wheels' folders.
    local libdirs="" d sp
    for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true); do
        for d in "$sp/nvidia/cu13/lib" "$sp/nvidia/cublas/lib" "$sp/nvidia/cuda_nvrtc/lib"; do
            [ -d "$d" ] && libdirs="${libdirs:+$libdirs:}$d"
        done
    done
    export NLI_BERT_CUDA_LIB_DIR="${NLI_BERT_CUDA_LIB_DIR:-$libdirs}"
    export NLI_BERT_REQUIRE_CUDA=1 NLI_BERT_REQUIRE_NVRTC=1 RUST_BACKTRACE=1
    export NLI_BERT_HOME="$work/home" CRITERION_HOME="$work/criterion"

    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(uname -a)"
        echo "NLI_BERT_CUDA_LIB_DIR=$NLI_BERT_CUDA_LIB_DIR"
        echo "--- bundle"
        cat "$bundle/manifest.txt"
        echo "--- nvidia-smi"
        nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
        echo "--- nvcc"
        nvcc --version 2>&1 || echo "(no nvcc)"
        echo "--- libraries"
        ls /usr/local/cuda/lib64 2>/dev/null | grep -E 'lib(cublas|cublasLt|nvrtc)\.so' || true
        echo "$NLI_BERT_CUDA_LIB_DIR" | tr ':' '\n' | while read -r d; do [ -n "$d" ] && ls "$d"; done
        echo "--- cpu"
        nproc
    } >"$out/env.txt" 2>&1

    : >"$out/tests.log"
    : >"$out/summary.txt"
    local kind name status
    cd "$repo"
    while read -r kind name; do
        [ "$kind" = test ] || continue
        echo "===== $name (filter: cuda nvrtc)" >>"$out/tests.log"
        set +e
        timeout "$(left "${TEST_TIMEOUT:-240}")" "$work/$name" cuda nvrtc --nocapture >>"$out/tests.log" 2>&1
        status=$?
        set -e
        echo "$name: $([ $status -eq 0 ] && echo ok || echo "FAILED (exit $status)")" | tee -a "$out/summary.txt"
        [ $status -eq 0 ] || failed=1
    done < <(awk '$1 == "test" { print $1, $2 }' "$bundle/manifest.txt")

    : >"$out/bench.log"
    local bargs
    read -r -a bargs <<<"${BENCH_ARGS:---warm-up-time 1 --measurement-time 3}"
    while read -r kind name; do
        [ "$kind" = bench ] || continue
        echo "===== $name" >>"$out/bench.log"
        set +e
        timeout "$(left "${BENCH_TIMEOUT:-240}")" "$work/$name" --bench ${BENCH_FILTER:+"$BENCH_FILTER"} "${bargs[@]}" >>"$out/bench.log" 2>&1
        status=$?
        set -e
        echo "$name: $([ $status -eq 0 ] && echo ok || echo "FAILED (exit $status)")" | tee -a "$out/summary.txt"
    done < <(awk '$1 == "bench" { print $1, $2 }' "$bundle/manifest.txt")

    if [ -n "${NLI_BERT_GPU_EXTRA:-}" ]; then
        local extra
        read -r -a extra <<<"$NLI_BERT_GPU_EXTRA"
        echo "===== nli-bert ${extra[*]}" >"$out/extra.log"
        set +e
        timeout "$(left 600)" "$work/nli-bert" "${extra[@]}" >>"$out/extra.log" 2>&1
        status=$?
        set -e
        echo "nli-bert ${extra[*]}: exit $status" | tee -a "$out/summary.txt"
    fi
    grep -hE '^test result:' "$out/tests.log" | awk '{p+=$4; f+=$6} END {print "tests: " p " passed, " f " failed"}' \
        | tee -a "$out/summary.txt"
    exit $failed
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
