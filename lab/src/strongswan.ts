/**
 * The strongSwan gateway of the lab (gw-c): Debian's charon with kernel-libipsec
 * (userspace ESP over the TUN device ipsec0, since the host kernel has no ESP) and
 * `encap = yes`, the recipe of /work/shared/peers (test/harness/peers.ts). One connection
 * per fleet gateway, responder only (the fleet side initiates: start action `start`). It
 * accepts the lab's proposals and the alternative set the live-change test switches to.
 */
import { join } from "node:path";
import { peerPsk, type LabTunnel } from "./spec.js";
import type { LabGateway } from "./model.js";

export const CHARON = process.env.FLEETSWAN_CHARON ?? "/usr/lib/ipsec/charon";
export const SWANCTL = process.env.FLEETSWAN_SWANCTL ?? "/usr/sbin/swanctl";

/** strongswan.conf for one charon (and its swanctl). `kernel`: XFRM instead of libipsec (UML). */
export function renderStrongswanConf(dir: string, kernel = false): string {
  const k = kernel ? "kernel-netlink" : "kernel-libipsec kernel-netlink";
  return `charon {
  # kdf is needed with an explicit load list (5.9.8); kernel-libipsec before kernel-netlink
  load = random nonce openssl pem pkcs1 pkcs8 x509 pubkey curve25519 kdf ${k} socket-default vici
  port = 500
  port_nat_t = 4500
  install_routes = yes
  retransmit_tries = 3
  plugins {
    vici {
      socket = unix://${dir}/charon.vici
    }
  }
  syslog {
    daemon {
      default = -1
    }
  }
  filelog {
    main {
      path = ${dir}/charon.log
      time_format = %T
      default = 1
      ike = 2
      flush_line = yes
    }
  }
}
swanctl {
  load = random openssl pem pkcs1 pkcs8 x509 pubkey
}
`;
}

export interface PeerConnOptions {
  /** IKE proposals (strongSwan syntax), default the lab's. */
  proposals?: string;
  espProposals?: string;
  /** `encap = yes` (ESP-in-UDP even without NAT); default true. */
  encap?: boolean;
  psk?: (tunnel: string) => string;
}

/** swanctl.conf for the strongSwan gateway `self`: one connection per tunnel that ends on it. */
export function renderSwanctlConf(self: LabGateway, tunnels: LabTunnel[], o: PeerConnOptions = {}): string {
  const mine = tunnels.filter((t) => t.kind === "peer" && t.b.name === self.name);
  const conns = mine.map((t) => `  ${t.name} {
    version = 2
    local_addrs = ${self.transitAddr}
    remote_addrs = ${t.a.transitAddr}
    proposals = ${o.proposals ?? "aes256gcm16-prfsha256-curve25519, aes128gcm16-prfsha256-ecp256"}
    rekey_time = 0
    encap = ${o.encap === false ? "no" : "yes"}
    dpd_delay = 10s
    local {
      auth = psk
      id = ${self.id}
    }
    remote {
      auth = psk
      id = ${t.a.id}
    }
    children {
      ${t.name} {
        local_ts = ${self.siteSubnet}
        remote_ts = ${t.a.siteSubnet}
        mode = tunnel
        esp_proposals = ${o.espProposals ?? "aes256gcm16, aes128gcm16"}
        rekey_time = 0
        start_action = none
        dpd_action = clear
      }
    }
  }
`).join("");
  const secrets = mine.map((t) => `  ike-${t.name} {
    id-0 = ${self.id}
    id-1 = ${t.a.id}
    secret = "${(o.psk ?? peerPsk)(t.name)}"
  }
`).join("");
  return `connections {\n${conns}}\nsecrets {\n${secrets}}\n`;
}

/** Files of one charon under its gateway dir. */
export const charonPaths = (dir: string): { conf: string; swanctlConf: string; vici: string; log: string; run: string } => ({
  conf: join(dir, "strongswan.conf"),
  swanctlConf: join(dir, "swanctl.conf"),
  vici: `unix://${dir}/charon.vici`,
  log: join(dir, "charon.log"),
  run: join(dir, "run"),
});
