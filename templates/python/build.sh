#!/usr/bin/env bash
# Build this job into build/job.wasm with componentize-py
# (pip install componentize-py). Works wherever this folder is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip install componentize-py" >&2; exit 127; }
mkdir -p build
componentize-py -d wit -w job componentize app -o build/job.wasm.tmp
mv build/job.wasm.tmp build/job.wasm
echo "built $here/build/job.wasm"
