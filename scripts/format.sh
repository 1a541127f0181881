#!/usr/bin/env bash
# scripts/format.sh - the C sources in .clang-format's style.
#   scripts/format.sh          rewrites every file that is not
#   scripts/format.sh --check  lists them and fails (make test runs this)
# clang-format is pinned (scripts/setup.sh puts it in third_party/venv):
# versions format differently, and the check must mean the same everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
CF=third_party/venv/bin/clang-format
[ -x "$CF" ] || { echo "format.sh: $CF missing (run scripts/setup.sh)" >&2; exit 2; }
mapfile -t files < <(find src tests/unit tests/integration tests/fuzz -name '*.[ch]' | sort)
if [ "${1:-}" = "--check" ]; then
  bad=0
  for f in "${files[@]}"; do
    if ! "$CF" --dry-run -Werror "$f" >/dev/null 2>&1; then echo "not formatted: $f"; bad=1; fi
  done
  [ $bad = 0 ] || { echo "format.sh: run scripts/format.sh (clang-format $("$CF" --version | awk '{print $NF}'))" >&2; exit 1; }
  echo "format.sh: ${#files[@]} files formatted"
else
  "$CF" -i "${files[@]}"
fi
