#!/bin/bash
# Generate TypeScript from proto/ into packages/proto/src/gen (committed).
# --check: regenerate into a temp dir and fail if it differs from the committed code.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=packages/proto/src/gen
command -v protoc >/dev/null || { echo "proto-gen: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
dest=$OUT
if [ "${1:-}" = "--check" ]; then dest=$(mktemp -d); trap 'rm -rf "$dest"' EXIT; fi
rm -rf "${dest:?}"/fleetswan "${dest:?}"/google
mkdir -p "$dest"
protoc --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
  --ts_proto_out="$dest" \
  --ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,env=node,forceLong=bigint,useDate=true,oneof=unions-value,importSuffix=.js \
  -I proto $(find proto -name '*.proto' | sort)
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$dest" "$OUT" >/dev/null; then
    echo "proto-gen: packages/proto/src/gen is out of date; run npm run proto:gen" >&2
    diff -r "$dest" "$OUT" | head -20 >&2
    exit 1
  fi
  echo "proto-gen: generated code is up to date"
fi
