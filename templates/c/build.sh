#!/usr/bin/env bash
# Build this job into build/job.wasm: wit-bindgen c (bindings) -> clang
# (wasm32-wasi reactor) -> wasm-tools component new with the WASI preview1
# adapter that matches the host (`wasm-jobs wasi-adapter`). Works wherever
# this folder is.
# Needs: clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 (Debian/Ubuntu),
# wit-bindgen-cli and wasm-tools (cargo install), and wasm-jobs ($WASM_JOBS,
# else on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
for tool in clang-19 wit-bindgen wasm-tools "${WASM_JOBS:-wasm-jobs}"; do
  command -v "$tool" >/dev/null || { echo "$tool not found (see README.md)" >&2; exit 127; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wit-bindgen c wit --world job --out-dir "$work/gen" >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -s -I"$work" \
  -o "$work/core.wasm" job.c "$work/gen/job.c" "$work/gen/job_component_type.o"
"${WASM_JOBS:-wasm-jobs}" wasi-adapter --reactor -o "$work/adapter.wasm"
mkdir -p build
wasm-tools component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$work/adapter.wasm" -o build/job.wasm.tmp
mv build/job.wasm.tmp build/job.wasm
echo "built $here/build/job.wasm"
