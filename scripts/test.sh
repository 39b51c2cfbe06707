#!/bin/bash
# scripts/test.sh unit|all -- run the compiled tests (build first: npm run build).
#   unit : every *.test.js under packages/*/dist, services/*/dist, test/dist
#          (in parallel, node's default file concurrency)
#   all  : unit tests, then every *.itest.js (real components: namespaces,
#          daemons, UML) one file at a time (--test-concurrency=1)
# Prints node's TAP summary lines (# pass N / # fail N) per phase and a final
# "N passed, N failed" line; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
case "$MODE" in unit|all) ;; *) echo "usage: $0 unit|all" >&2; exit 2 ;; esac

find_tests() {  # PATTERN
  local dirs=()
  for d in packages/*/dist services/*/dist test/dist; do [ -d "$d" ] && dirs+=("$d"); done
  [ ${#dirs[@]} -gt 0 ] || return 0
  find "${dirs[@]}" -type f -name "$1" -not -path '*/node_modules/*' | sort
}

PASS=0; FAIL=0; SKIP=0; RC=0
LOG=$(mktemp /tmp/fleetswan-test.XXXXXX)
trap 'rm -f "$LOG"' EXIT

run_phase() {  # NAME CONCURRENCY FILES...
  local name=$1 conc=$2; shift 2
  if [ $# -eq 0 ]; then echo "# $name: no test files"; return 0; fi
  echo "# $name: $# file(s)"
  local args=(--test --test-reporter=tap)
  [ "$conc" != default ] && args+=(--test-concurrency="$conc")
  [ -n "${TEST_TIMEOUT_MS:-}" ] && args+=(--test-timeout="$TEST_TIMEOUT_MS")
  node "${args[@]}" "$@" 2>&1 | tee "$LOG"
  local rc=${PIPESTATUS[0]}
  local p f s
  p=$(grep -E '^# pass [0-9]+' "$LOG" | tail -n 1 | awk '{print $3}')
  f=$(grep -E '^# fail [0-9]+' "$LOG" | tail -n 1 | awk '{print $3}')
  s=$(grep -E '^# skipped [0-9]+' "$LOG" | tail -n 1 | awk '{print $3}')
  PASS=$((PASS + ${p:-0})); FAIL=$((FAIL + ${f:-0})); SKIP=$((SKIP + ${s:-0}))
  if [ "$rc" -ne 0 ]; then
    RC=1
    # a crash without a summary still counts as a failure
    [ "${f:-0}" -eq 0 ] && FAIL=$((FAIL + 1))
  fi
}

mapfile -t UNIT < <(find_tests '*.test.js')
run_phase unit default "${UNIT[@]}"

if [ "$MODE" = all ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "# warning: not root, integration tests will skip what needs root" >&2
  fi
  mapfile -t ITEST < <(find_tests '*.itest.js')
  TEST_TIMEOUT_MS=${TEST_TIMEOUT_MS:-900000} run_phase integration 1 "${ITEST[@]}"
fi

echo "${PASS} passed, ${FAIL} failed, ${SKIP} skipped"
exit $RC
