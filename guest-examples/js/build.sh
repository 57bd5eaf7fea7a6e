#!/usr/bin/env bash
# Build the JavaScript example job into build/job.wasm with componentize-js.
# Needs Node.js and npm; installs componentize-js into node_modules on first
# use. Skips work when the component is newer than its sources.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build/job.wasm"
wit="$here/../../wit"
if [ -f "$out" ] && [ -z "$(find "$here/job.js" "$wit" -newer "$out" -print -quit)" ]; then
  echo "$out is up to date"; exit 0
fi
cd "$here"
[ -d node_modules/@bytecodealliance/preview2-shim ] || npm ci --no-audit --no-fund
mkdir -p build
# componentize-js's defaults: its fetch() imports wasi:http, which the host
# implements (only what the tenant's policy grants goes out).
npx componentize-js --wit "$wit" --world-name job -o "$out.tmp" job.js
mv "$out.tmp" "$out"
echo "built $out"
