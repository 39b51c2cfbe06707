# syntax=docker/dockerfile:1
#
# One image for all four services; the first argument picks the service:
#   docker run IMAGE controller ...   |  keymgr  |  ikeagent  |  dataplane
# (the entry point is the `fleetswan` CLI, bin/fleetswan.js).
#
# Users (see docs/deployment.md, "Who runs as what"):
#   controller, keymgr, CLI  uid/gid 65532 (non-root, no capabilities): the image default.
#   dataplane                uid 0 with only CAP_NET_ADMIN (XFRM netlink) and CAP_NET_RAW;
#                            Kubernetes grants added capabilities to uid 0 only (no ambient set).
#   ikeagent                 uid 0 with only CAP_NET_BIND_SERVICE (UDP 500); no NET_ADMIN: the
#                            kernel is touched through the dataplane socket only.
# The DaemonSet (deploy/kubernetes/base/gateway-daemonset.yaml) and the systemd units set these.
#
# Checked statically by test/ops/dockerfile.test.ts: stages, COPY sources, ports, user.

ARG NODE_IMAGE=node:20-bookworm
ARG NODE_RUNTIME_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------- builder ----
FROM ${NODE_IMAGE} AS builder
# node:20-bookworm has python3, make and g++: node-gyp builds the dataplane's N-API addon.
WORKDIR /src
# Manifests first, so that `npm ci` is cached while only sources change.
COPY package.json package-lock.json ./
COPY packages/ packages/
COPY services/ services/
# Workspaces whose code the image does not need: their manifests only (npm ci wants every
# workspace of package.json; test/ops/dockerfile.test.ts checks that none is missing).
COPY test/package.json test/package.json
COPY lab/package.json lab/package.json
# --ignore-scripts: no third-party install scripts run; the one native addon we need is
# built explicitly below.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.base.json tsconfig.json ./
COPY bin/ bin/
# Native code, built here for this image's Node and libc: the dataplane's N-API addon
# (services/dataplane/native, node-addon-api; its "build:native" script runs node-gyp, which
# npm provides) and the netlink package's binding (node-gyp-build: its prebuilt binary or a
# local build).
RUN npm run build:native -w @fleetswan/dataplane \
 && npm rebuild netlink
# The CLI references every service: this compiles all four and their libraries.
RUN npx tsc -b packages/cli
# Runtime dependencies only, and no TypeScript build state.
RUN npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
 && find . -name '*.tsbuildinfo' -delete \
 && rm -rf test services/*/test services/*/dist/test packages/*/dist/test

# ---------------------------------------------------------------- runtime ----
FROM ${NODE_RUNTIME_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fleetswan" \
      org.opencontainers.image.description="fleetswan IPsec control plane: controller, keymgr, ikeagent, dataplane" \
      org.opencontainers.image.source="https://github.com/fleetswan/fleetswan" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production
# 65532: the conventional "nonroot" uid/gid of distroless images.
RUN groupadd --system --gid 65532 fleetswan \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/fleetswan --no-create-home --shell /usr/sbin/nologin fleetswan \
 && install -d -o 65532 -g 65532 -m 0750 /etc/fleetswan /run/fleetswan \
 && install -d -o 0 -g 0 -m 0700 /var/lib/fleetswan
WORKDIR /opt/fleetswan
COPY --from=builder /src/package.json /src/package-lock.json ./
COPY --from=builder /src/node_modules/ node_modules/
COPY --from=builder /src/packages/ packages/
COPY --from=builder /src/services/ services/
COPY --from=builder /src/bin/ bin/
# Metrics ports (packages/common/src/defaults.ts METRICS_PORT): controller, keymgr,
# ikeagent, dataplane. IKE: UDP 500 (ikeagent) and 4500 (NAT-T, dataplane).
EXPOSE 9741 9742 9743 9744 500/udp 4500/udp
USER 65532:65532
ENTRYPOINT ["node", "/opt/fleetswan/bin/fleetswan.js"]
CMD ["--help"]
