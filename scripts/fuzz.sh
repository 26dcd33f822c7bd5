#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ one after another, each for a bounded time, on one core.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 120 s for each of the targets in fuzz/Cargo.toml)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Each target starts from
# its seeds (tests/fixtures/fuzz/<target>/ and the fixtures listed in tests/fixtures/fuzz/seeds.txt)
# and its working corpus fuzz/corpus/<target>/ (kept between runs, git-ignored). Limits: 2 GB RSS,
# 1 GB for any single allocation (a bigger one is a finding: sizes must be checked before
# allocating), 10 s per input (a hang), inputs up to $FUZZ_MAX_LEN bytes (default 65536: larger
# seeds are cut, which keeps the torch target fast). Crashing inputs land in fuzz/artifacts/<target>/: copy each
# into tests/fixtures/fuzz/<target>/ once fixed, so that tests/fuzz_smoke.rs replays it forever.
# Prints one summary line per target (executions, corpus size, outcome); exits 1 if any crashed.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-120}
shift || true
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^nli-bert-fuzz$')
fi

(cd fuzz && cargo +nightly fuzz build -a) || exit 1

failed=0
summary=()
for t in "${targets[@]}"; do
  seeds="fuzz/seeds/$t"
  rm -rf "$seeds" && mkdir -p "$seeds" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  cp tests/fixtures/fuzz/"$t"/* "$seeds"/ 2>/dev/null || true
  while read -r target path; do
    [ "$target" = "$t" ] && cp "$path" "$seeds/"
  done < <(grep -v '^#' tests/fixtures/fuzz/seeds.txt)
  log="fuzz/artifacts/$t/last-run.log"
  echo "== $t: ${secs}s (log: $log)"
  (cd fuzz && cargo +nightly fuzz run -a "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
      -max_len="${FUZZ_MAX_LEN:-65536}" \
      -print_final_stats=1) >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  if [ $rc -eq 0 ]; then
    outcome="no crash"
  else
    outcome="CRASH (exit $rc): $(grep -m1 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|out-of-memory|timeout' "$log" | head -c 200)"
    failed=1
  fi
  summary+=("$t: ${secs}s, ${execs:-?} executions, corpus ${corpus} inputs, ${outcome}")
  echo "   ${summary[-1]}"
done

echo
echo "summary ($(date -u +%Y-%m-%d), $(rustc +nightly --version)):"
printf '  %s\n' "${summary[@]}"
exit $failed
