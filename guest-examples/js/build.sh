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
# -d: leave out the WASI features this job does not use, so the component
# imports no wasi:http (the host would link it as traps anyway).
npx componentize-js --wit "$wit" --world-name job -d http -d fetch-event -o "$out.tmp" job.js
mv "$out.tmp" "$out"
echo "built $out"
