#!/usr/bin/env bash
# Build this job into build/job.wasm. Works wherever this folder is.
#
# With rustup (the normal case) this is
#   rustup target add wasm32-wasip2 && cargo build --release --target wasm32-wasip2
# which makes a component directly. Where rustup has no wasm32 standard
# library, Debian's rustc-web builds std from source for wasm32-wasip1, and
# wasm-tools makes the component with the WASI adapter that matches the host
# (`wasm-jobs wasi-adapter`). Needs (apt) rustc-web cargo-web rust-web-src
# libstd-rust-web-dev lld-19 wasi-libc, (cargo install) wasm-tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
crate=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | head -1 | tr - _)
mkdir -p build
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  cargo build --release --quiet --target wasm32-wasip2
  cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/$crate.wasm" build/job.wasm
  echo "built $here/build/job.wasm"; exit 0
fi
for tool in /usr/bin/cargo /usr/bin/rustc wasm-ld-19 wasm-tools "${WASM_JOBS:-wasm-jobs}"; do
  command -v "$tool" >/dev/null || { echo "$tool not found (see README.md)" >&2; exit 127; }
done
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_WASIP1_LINKER=wasm-ld-19
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C link-self-contained=no -L native=/usr/lib/wasm32-wasi"
unset RUSTFLAGS CARGO_BUILD_TARGET
/usr/bin/cargo build --release --quiet -Zbuild-std=std,panic_abort --target wasm32-wasip1
core="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/$crate.wasm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${WASM_JOBS:-wasm-jobs}" wasi-adapter --reactor -o "$work/adapter.wasm"
wasm-tools component new "$core" --adapt "wasi_snapshot_preview1=$work/adapter.wasm" -o build/job.wasm.tmp
mv build/job.wasm.tmp build/job.wasm
echo "built $here/build/job.wasm"
