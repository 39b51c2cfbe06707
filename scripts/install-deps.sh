#!/bin/bash
# scripts/install-deps.sh -- install everything fleetswan's tests need on a
# Debian 12 machine (run as root). Idempotent and quick when all is present:
# it only calls apt-get when a package is missing.
#
#   * Debian packages: NATS, strongSwan (charon, swanctl, kernel-libipsec),
#     tshark/dumpcap, iperf3, User-Mode Linux, iproute2, nftables, prometheus,
#     pluto's runtime libraries and certutil, protoc.
#   * Libreswan: conflicts with strongSwan as a Debian package, so its .deb is
#     downloaded and UNPACKED into $FLEETSWAN_LIBRESWAN (default
#     /opt/fleetswan-libreswan), never installed.
#   * Services that the packages enable/start (strongswan-starter, nats-server,
#     prometheus, ...) are stopped and disabled: tests start their own.
set -euo pipefail

LIBRESWAN_ROOT=${FLEETSWAN_LIBRESWAN:-/opt/fleetswan-libreswan}
PKGS=(nats-server protobuf-compiler strongswan-charon strongswan-swanctl
      libcharon-extra-plugins libstrongswan-extra-plugins tshark iperf3
      user-mode-linux kmod iputils-ping iproute2 nftables prometheus
      libnss3-tools libnss3 libnspr4 libunbound8 libevent-2.1-7
      libevent-pthreads-2.1-7 libldns3 bc procps psmisc curl ca-certificates
      openssl util-linux)
SERVICES=(strongswan-starter strongswan ipsec nats-server prometheus
          prometheus-node-exporter)

log() { echo "[install-deps] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # tshark asks whether non-root users may capture: answer once, non-interactively
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  # do not let package scripts start daemons during the install
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  apt-get update -qq
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ $policy_added = 1 ] && rm -f /usr/sbin/policy-rc.d
else
  log "all Debian packages present"
fi

# stop/disable services the packages enable (tests run their own instances)
if command -v systemctl >/dev/null 2>&1; then
  for s in "${SERVICES[@]}"; do
    if systemctl list-unit-files "$s.service" 2>/dev/null | grep -q "^$s.service"; then
      systemctl disable --now "$s.service" >/dev/null 2>&1 || true
    fi
  done
fi

# Libreswan: download + unpack (not install) into $LIBRESWAN_ROOT
if [ ! -x "$LIBRESWAN_ROOT/usr/libexec/ipsec/pluto" ]; then
  log "unpacking libreswan into $LIBRESWAN_ROOT"
  tmp=$(mktemp -d /var/tmp/fleetswan-libreswan-deb.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  ( cd "$tmp" && { apt-get download libreswan >/dev/null 2>&1 ||
                   { apt-get update -qq && apt-get download libreswan; }; } )
  mkdir -p "$LIBRESWAN_ROOT"
  dpkg-deb -x "$tmp"/libreswan_*.deb "$LIBRESWAN_ROOT"
fi
"$LIBRESWAN_ROOT/usr/libexec/ipsec/pluto" --version >/dev/null 2>&1 ||
  log "warning: pluto from $LIBRESWAN_ROOT does not run (missing libraries?)"

log "done"
