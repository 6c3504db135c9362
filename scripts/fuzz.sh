#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes in vcl-serve (fuzz/fuzz_targets: .npy,
# PNG/JPEG through the pixel limits, multipart, KServe JSON + binary, manifest JSON)
# with cargo-fuzz (libFuzzer + AddressSanitizer), each for FUZZ_SECONDS (default 20),
# starting from the committed corpus fuzz/corpus/<target> (the cases of the
# reliability issue). A crash fails the script and leaves its input in
# fuzz/artifacts/<target>/. Run by `make test`; by hand: FUZZ_SECONDS=600 scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-20}
TOOLS=$PWD/.cache/cargo-tools
CARGO_FUZZ=0.13.2
if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ into $TOOLS"
  cargo install cargo-fuzz --version "$CARGO_FUZZ" --locked --root "$TOOLS" --quiet
fi
export PATH="$TOOLS/bin:$PATH"
# cargo-fuzz passes nightly flags (-Zsanitizer=address); this machine's one toolchain
# is stable, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
# No debug info in the fuzz build: it is run here, not debugged here (disk).
export CARGO_PROFILE_RELEASE_DEBUG=0
TARGET_DIR=$PWD/target/fuzz
targets=$(cargo fuzz list --fuzz-dir fuzz)
echo "fuzz: building $(echo $targets | wc -w) targets"
cargo fuzz build --fuzz-dir fuzz --target-dir "$TARGET_DIR" 2>&1 | grep -v "^\s*Compiling" || true
for t in $targets; do
  scratch="$TARGET_DIR/corpus/$t"
  mkdir -p "$scratch"
  out=$(cargo fuzz run --fuzz-dir fuzz --target-dir "$TARGET_DIR" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: target $t FAILED (input in fuzz/artifacts/$t/)"
    exit 1
  }
  runs=$(echo "$out" | grep -o "stat::number_of_executed_units: *[0-9]*" | grep -o "[0-9]*$" || echo "?")
  cov=$(echo "$out" | grep -o "cov: [0-9]*" | tail -1)
  echo "fuzz: $t ok: $runs inputs in ${SECONDS_EACH}s, $cov, corpus $(ls "$scratch" | wc -l) + $(ls "fuzz/corpus/$t" | wc -l) seeds"
done
