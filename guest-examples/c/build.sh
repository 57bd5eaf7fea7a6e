#!/usr/bin/env bash
# Build a C job into a component: wit-bindgen c (bindings) -> clang-19
# (wasm32-wasi reactor) -> wasm-tools component new with the WASI preview1
# adapter. With no arguments builds this example into build/job.wasm;
# `build.sh OUT.wasm SOURCE.c...` builds other sources (the test fixtures).
# Needs: clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 (apt),
# wit-bindgen-cli and wasm-tools (cargo install), and the wasm-jobs binary
# (for the adapter; $WASM_JOBS, else `wasm-jobs` on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The job world plus wasi:http (../wit-http/world.wit), named `job` in the
# generated code so the example and the test fixtures share one set of names.
wit="$here/../wit-http"
if [ $# -ge 2 ]; then out=$1; shift; srcs=("$@"); else out="$here/build/job.wasm"; srcs=("$here/job.c"); fi
srcs+=("$here/json.c")
if [ -f "$out" ] && [ -z "$(find "${srcs[@]}" "$here/json.h" "$wit" "$0" -newer "$out" -print -quit)" ]; then
  echo "$out is up to date"; exit 0
fi
for tool in clang-19 wit-bindgen wasm-tools; do
  command -v "$tool" >/dev/null || { echo "$tool not found (see guest-examples/c/README.md)" >&2; exit 127; }
done
wasm_jobs=${WASM_JOBS:-wasm-jobs}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wit-bindgen c "$wit" --world job-with-http --rename-world job --out-dir "$work/gen" >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -s -I"$work" -I"$here" \
  -o "$work/core.wasm" "${srcs[@]}" "$work/gen/job.c" "$work/gen/job_component_type.o"
"$wasm_jobs" wasi-adapter --reactor -o "$work/adapter.wasm"
mkdir -p "$(dirname "$out")"
wasm-tools component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$work/adapter.wasm" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
