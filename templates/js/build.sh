#!/usr/bin/env bash
# Build this job into build/job.wasm with componentize-js. Needs Node.js and
# npm; installs componentize-js into node_modules on first use. Works
# wherever this folder is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm install --no-audit --no-fund
mkdir -p build
npx componentize-js --wit wit --world-name job -o build/job.wasm.tmp job.js
mv build/job.wasm.tmp build/job.wasm
echo "built $here/build/job.wasm"
