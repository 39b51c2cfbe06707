#!/bin/sh
# Userspace ESP throughput vs strongSwan kernel-libipsec (see esp-throughput.mjs). Root.
set -e
cd "$(dirname "$0")/.."
[ -f services/dataplane/native/build/Release/fsesp.node ] || npm run build:native -w @fleetswan/dataplane
npx tsc -b services/dataplane
exec node bench/esp-throughput.mjs "$@"
