#!/bin/sh
# Userspace ESP throughput vs strongSwan kernel-libipsec (see esp-throughput.mjs). Root.
set -e
cd "$(dirname "$0")/.."
addon=services/dataplane/native/build/Release/fsesp.node
stale=
for src in services/dataplane/native/*.cc services/dataplane/native/*.h services/dataplane/native/binding.gyp; do
  [ -f "$addon" ] && [ "$addon" -nt "$src" ] || stale=1
done
[ -z "$stale" ] || npm run build:native -w @fleetswan/dataplane >/dev/null
npx tsc -b services/dataplane
exec node bench/esp-throughput.mjs "$@"
