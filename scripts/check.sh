#!/bin/bash
# The README's test command: on a fresh Debian 12 + Node 20 machine (as root) installs what the
# tests need (system packages, npm dependencies), builds, and runs every test. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
START=$(date +%s)
step() { echo "=== [$(( $(date +%s) - START ))s] $*"; }

step "install system dependencies"
bash scripts/install-deps.sh

step "node $(node --version), npm $(npm --version): npm ci"
npm ci --no-audit --no-fund

step "build"
npm run build
npm run proto:check

step "test"
npm test
step "done"
