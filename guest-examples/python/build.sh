#!/usr/bin/env bash
# Build the Python example job into build/job.wasm with componentize-py.
# Needs: pip install componentize-py (see README.md). Skips work when the
# component is newer than its sources.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build/job.wasm"
# The job world plus wasi:http (../wit-http/world.wit).
wit="$here/../wit-http"
if [ -f "$out" ] && [ -z "$(find "$here/app.py" "$wit" "$here/../../wit" -newer "$out" -print -quit)" ]; then
  echo "$out is up to date"; exit 0
fi
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip install componentize-py" >&2; exit 127; }
mkdir -p "$here/build"
cd "$here"
componentize-py -d "$wit" -w job-with-http componentize app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
