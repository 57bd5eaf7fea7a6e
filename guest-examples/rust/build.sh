#!/usr/bin/env bash
# Build the Rust example job into build/job.wasm.
#
# Where rustup can add the target (the normal case), a job author runs:
#   rustup target add wasm32-wasip2 && cargo build --release --target wasm32-wasip2
# and gets a component directly. This machine's rustup has no wasm32 standard
# library, so this script uses Debian's rustc-web (1.96) to build std from
# source for wasm32-wasip1, then makes a component with wasm-tools and the
# WASI preview1 adapter that matches the host (`wasm-jobs wasi-adapter`).
# Needs (apt): rustc-web cargo-web rust-web-src libstd-rust-web-dev lld-19
# wasi-libc; (cargo install): wasm-tools. Skips work when up to date.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build/job.wasm"
wit="$here/../wit-http"
if [ -f "$out" ] && [ -z "$(find "$here/src" "$here/Cargo.toml" "$wit" "$here/../../wit" "$0" -newer "$out" -print -quit)" ]; then
  echo "$out is up to date"; exit 0
fi
for tool in /usr/bin/cargo /usr/bin/rustc wasm-ld-19 wasm-tools; do
  command -v "$tool" >/dev/null || { echo "$tool not found (see guest-examples/rust/README.md)" >&2; exit 127; }
done
export CARGO_TARGET_DIR=${WASM_JOBS_GUEST_TARGET:-$HOME/.cache/wasm-jobs/guest-rust-target}
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_WASIP1_LINKER=wasm-ld-19
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C link-self-contained=no -L native=/usr/lib/wasm32-wasi"
unset RUSTFLAGS CARGO_BUILD_TARGET
cd "$here"
/usr/bin/cargo build --release --quiet -Zbuild-std=std,panic_abort --target wasm32-wasip1
core="$CARGO_TARGET_DIR/wasm32-wasip1/release/wasm_jobs_example_rust.wasm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${WASM_JOBS:-wasm-jobs}" wasi-adapter --reactor -o "$work/adapter.wasm"
mkdir -p build
wasm-tools component new "$core" --adapt "wasi_snapshot_preview1=$work/adapter.wasm" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
