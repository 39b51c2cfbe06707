/**
 * One site-to-site tunnel described once and rendered for either side: our SAs and
 * policies (dataplane proto objects) and the equivalent `ip xfrm` commands for a kernel
 * peer, plus tshark's esp_sa UAT lines. Used by the userspace itests and the benchmark.
 */
import { dataplane } from "@fleetswan/proto";

export type AlgName = "aes-gcm-128" | "aes-gcm-256" | "chacha20-poly1305" | "aes-cbc-sha256";

export interface TunnelSpec {
  alg: AlgName;
  encap: boolean;
  /** Outer addresses of side A and B. */
  a: string;
  b: string;
  /** Site subnets behind A and B ("10.1.0.0/16"). */
  aNet: string;
  bNet: string;
  /** SPIs of A->B and B->A. */
  spiAB: number;
  spiBA: number;
  /** Hex key material, per direction: encryption (with salt for AEAD) and integrity. */
  keyAB: string;
  keyBA: string;
  authAB?: string;
  authBA?: string;
  esn?: boolean;
  replayWindow?: number;
  /** UDP ports (default 4500 both). */
  portA?: number;
  portB?: number;
  reqid?: number;
}

export function keyLengths(alg: AlgName): { enc: number; auth: number } {
  switch (alg) {
    case "aes-gcm-128": return { enc: 20, auth: 0 };
    case "aes-gcm-256": return { enc: 36, auth: 0 };
    case "chacha20-poly1305": return { enc: 36, auth: 0 };
    case "aes-cbc-sha256": return { enc: 16, auth: 32 };
  }
}

/** Deterministic test keys (hex) of the right length. */
export function testKey(len: number, seed: number): string {
  let s = "";
  for (let i = 0; i < len; i++) s += ((seed * 31 + i * 7) & 0xff).toString(16).padStart(2, "0");
  return s;
}

export function makeSpec(alg: AlgName, encap: boolean, over: Partial<TunnelSpec> = {}): TunnelSpec {
  const k = keyLengths(alg);
  return {
    alg, encap,
    a: "192.0.2.1", b: "192.0.2.2", aNet: "10.1.0.0/16", bNet: "10.2.0.0/16",
    spiAB: 0xc0000101, spiBA: 0xc0000202,
    keyAB: testKey(k.enc, 1), keyBA: testKey(k.enc, 2),
    authAB: k.auth ? testKey(k.auth, 3) : undefined, authBA: k.auth ? testKey(k.auth, 4) : undefined,
    ...over,
  };
}

function prefix(p: string): dataplane.Prefix {
  const [address, len] = p.split("/");
  return { address: address!, length: Number(len) };
}

function algFields(alg: AlgName, key: string, auth: string | undefined): Pick<dataplane.SecurityAssociation, "encryption" | "encryptionKey" | "integrity" | "integrityKey"> {
  const E = dataplane.Encryption, I = dataplane.Integrity;
  const encryption = alg === "chacha20-poly1305" ? E.ENCRYPTION_CHACHA20_POLY1305 : alg === "aes-cbc-sha256" ? E.ENCRYPTION_AES_CBC : E.ENCRYPTION_AES_GCM_16;
  return {
    encryption,
    encryptionKey: Buffer.from(key, "hex"),
    integrity: alg === "aes-cbc-sha256" ? I.INTEGRITY_HMAC_SHA2_256_128 : I.INTEGRITY_NONE,
    integrityKey: auth ? Buffer.from(auth, "hex") : Buffer.alloc(0),
  };
}

/** SAs and policies for side "a" or "b" as our backend takes them. */
export function sideConfig(t: TunnelSpec, side: "a" | "b"): { sas: dataplane.SecurityAssociation[]; policies: dataplane.Policy[] } {
  const me = side === "a" ? t.a : t.b, peer = side === "a" ? t.b : t.a;
  const myNet = side === "a" ? t.aNet : t.bNet, peerNet = side === "a" ? t.bNet : t.aNet;
  const myPort = (side === "a" ? t.portA : t.portB) ?? 4500, peerPort = (side === "a" ? t.portB : t.portA) ?? 4500;
  const outSpi = side === "a" ? t.spiAB : t.spiBA, inSpi = side === "a" ? t.spiBA : t.spiAB;
  const outKey = side === "a" ? t.keyAB : t.keyBA, inKey = side === "a" ? t.keyBA : t.keyAB;
  const outAuth = side === "a" ? t.authAB : t.authBA, inAuth = side === "a" ? t.authBA : t.authAB;
  const reqid = t.reqid ?? 7;
  const base = {
    mode: dataplane.Mode.MODE_TUNNEL, reqid, replayWindow: t.replayWindow ?? 0, esn: t.esn ?? false,
    lifetime: undefined, mark: 0, ifId: 0, connection: "test", childId: 1n,
  };
  const outSa: dataplane.SecurityAssociation = {
    ...base, ...algFields(t.alg, outKey, outAuth),
    id: { dst: peer, spi: outSpi, protocol: 50 }, src: me,
    encap: t.encap ? { srcPort: myPort, dstPort: peerPort } : undefined,
    direction: dataplane.Direction.DIRECTION_OUT,
    selector: { src: prefix(myNet), dst: prefix(peerNet), protocol: 0, srcPort: 0, dstPort: 0 },
  };
  const inSa: dataplane.SecurityAssociation = {
    ...base, ...algFields(t.alg, inKey, inAuth),
    id: { dst: me, spi: inSpi, protocol: 50 }, src: peer,
    encap: t.encap ? { srcPort: peerPort, dstPort: myPort } : undefined,
    direction: dataplane.Direction.DIRECTION_IN,
    selector: { src: prefix(peerNet), dst: prefix(myNet), protocol: 0, srcPort: 0, dstPort: 0 },
  };
  const pol = (dir: dataplane.Direction, src: string, dst: string, tsrc: string, tdst: string): dataplane.Policy => ({
    selector: { src: prefix(src), dst: prefix(dst), protocol: 0, srcPort: 0, dstPort: 0 },
    direction: dir, action: dataplane.PolicyAction.POLICY_ACTION_PROTECT, priority: 1000,
    template: { src: tsrc, dst: tdst, mode: dataplane.Mode.MODE_TUNNEL, reqid, protocol: 50 },
    mark: 0, ifId: 0, connection: "test",
  });
  return {
    sas: [outSa, inSa],
    policies: [
      pol(dataplane.Direction.DIRECTION_OUT, myNet, peerNet, me, peer),
      pol(dataplane.Direction.DIRECTION_IN, peerNet, myNet, peer, me),
      pol(dataplane.Direction.DIRECTION_FWD, peerNet, myNet, peer, me),
    ],
  };
}

/** `ip xfrm` commands that configure the kernel as side "b" (or "a") of the tunnel. */
export function xfrmCommands(t: TunnelSpec, side: "a" | "b"): string[] {
  const me = side === "a" ? t.a : t.b, peer = side === "a" ? t.b : t.a;
  const myNet = side === "a" ? t.aNet : t.bNet, peerNet = side === "a" ? t.bNet : t.aNet;
  const myPort = (side === "a" ? t.portA : t.portB) ?? 4500, peerPort = (side === "a" ? t.portB : t.portA) ?? 4500;
  const outSpi = side === "a" ? t.spiAB : t.spiBA, inSpi = side === "a" ? t.spiBA : t.spiAB;
  const outKey = side === "a" ? t.keyAB : t.keyBA, inKey = side === "a" ? t.keyBA : t.keyAB;
  const outAuth = side === "a" ? t.authAB : t.authBA, inAuth = side === "a" ? t.authBA : t.authAB;
  const reqid = t.reqid ?? 7;
  const alg = (key: string, auth: string | undefined): string => {
    switch (t.alg) {
      case "aes-gcm-128":
      case "aes-gcm-256": return `aead 'rfc4106(gcm(aes))' 0x${key} 128`;
      case "chacha20-poly1305": return `aead 'rfc7539esp(chacha20,poly1305)' 0x${key} 128`;
      case "aes-cbc-sha256": return `enc 'cbc(aes)' 0x${key} auth-trunc 'hmac(sha256)' 0x${auth} 128`;
    }
  };
  const hex = (n: number) => `0x${(n >>> 0).toString(16)}`;
  const encapOut = t.encap ? ` encap espinudp ${myPort} ${peerPort} 0.0.0.0` : "";
  const encapIn = t.encap ? ` encap espinudp ${peerPort} ${myPort} 0.0.0.0` : "";
  return [
    `ip xfrm state add src ${me} dst ${peer} proto esp spi ${hex(outSpi)} reqid ${reqid} mode tunnel ${alg(outKey, outAuth)}${encapOut}${t.esn ? " flag esn" : ""}`,
    `ip xfrm state add src ${peer} dst ${me} proto esp spi ${hex(inSpi)} reqid ${reqid} mode tunnel ${alg(inKey, inAuth)}${encapIn}${t.esn ? " flag esn replay-window 128" : " replay-window 32"}`,
    `ip xfrm policy add src ${myNet} dst ${peerNet} dir out tmpl src ${me} dst ${peer} proto esp reqid ${reqid} mode tunnel`,
    `ip xfrm policy add src ${peerNet} dst ${myNet} dir in tmpl src ${peer} dst ${me} proto esp reqid ${reqid} mode tunnel`,
    `ip xfrm policy add src ${peerNet} dst ${myNet} dir fwd tmpl src ${peer} dst ${me} proto esp reqid ${reqid} mode tunnel`,
  ];
}

/** tshark esp_sa UAT lines for both directions (wireshark's esp_sa file format). */
export function tsharkEspSa(t: TunnelSpec): string[] {
  const enc = t.alg === "aes-gcm-128" ? "AES-GCM with 16 octet ICV [RFC4106]" : t.alg === "aes-gcm-256" ? "AES-GCM with 16 octet ICV [RFC4106]" : t.alg === "chacha20-poly1305" ? "ChaCha20 with Poly1305 [RFC7634]" : "AES-CBC [RFC3602]";
  const auth = t.alg === "aes-cbc-sha256" ? "HMAC-SHA-256-128 [RFC4868]" : "NULL";
  const line = (src: string, dst: string, spi: number, key: string, ak: string | undefined) =>
    `"IPv4","${src}","${dst}","0x${(spi >>> 0).toString(16).padStart(8, "0")}","${enc}","0x${key}","${auth}","${ak ? `0x${ak}` : ""}"`;
  return [line(t.a, t.b, t.spiAB, t.keyAB, t.authAB), line(t.b, t.a, t.spiBA, t.keyBA, t.authBA)];
}
