/**
 * The fleet CA: an ECDSA P-256 root (node's WebCrypto through @peculiar/x509) that issues
 * gateway certificates for IKEv2 signature authentication (RFC 7427) and for TLS
 * between services and NATS. The CA private key lives in the fleet-keys bucket,
 * encrypted with the master key, like every other secret.
 */
import "reflect-metadata"; // @peculiar/x509 (tsyringe) needs it before it loads
import { webcrypto, randomBytes } from "node:crypto";
import { isIP } from "node:net";
import * as x509 from "@peculiar/x509";
import { FleetswanError, Secret } from "@fleetswan/common";

x509.cryptoProvider.set(webcrypto as never);
const subtle = webcrypto.subtle;

export type LeafKeyType = "ecdsa-p256" | "ed25519" | "rsa-3072";

const CA_ALG = { name: "ECDSA", namedCurve: "P-256" } as const;
const CA_SIGN = { name: "ECDSA", hash: "SHA-256" } as const;
/** id-kp-ipsecIKE (RFC 4945 §5.1.3.12). */
const EKU_IPSEC_IKE = "1.3.6.1.5.5.7.3.17";
const EKU_SERVER = "1.3.6.1.5.5.7.3.1";
const EKU_CLIENT = "1.3.6.1.5.5.7.3.2";

export interface CaMaterial {
  certificatePem: string;
  /** PKCS#8 PEM. */
  privateKeyPem: Secret;
}

export interface IssuedCertificate {
  certificatePem: string;
  privateKeyPem: Secret;
  notAfter: Date;
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive INTEGER
  return b.toString("hex");
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").trimEnd();
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

function pemToDer(text: string): ArrayBuffer {
  const b64 = text.replace(/-----(BEGIN|END) [A-Z ]+-----/g, "").replace(/\s+/g, "");
  const buf = Buffer.from(b64, "base64");
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer;
}

/** Create a new self-signed fleet CA (valid `years`, default 10). */
export async function createCa(name = "fleetswan fleet CA", years = 10, now = new Date()): Promise<CaMaterial> {
  const keys = (await subtle.generateKey(CA_ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const notAfter = new Date(now.getTime());
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + years);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name}`,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter,
    signingAlgorithm: CA_SIGN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = await subtle.exportKey("pkcs8", keys.privateKey);
  return { certificatePem: cert.toString("pem") + "\n", privateKeyPem: new Secret(pem("PRIVATE KEY", pkcs8)) };
}

async function leafKeys(type: LeafKeyType): Promise<webcrypto.CryptoKeyPair> {
  switch (type) {
    case "ecdsa-p256":
      return (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    case "ed25519":
      return (await subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    case "rsa-3072":
      return (await subtle.generateKey(
        { name: "RSASSA-PKCS1-v1_5", modulusLength: 3072, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
        true,
        ["sign", "verify"],
      )) as webcrypto.CryptoKeyPair;
    default:
      throw new FleetswanError("KEY_TYPE_UNSUPPORTED", `key type "${String(type)}" is not one of ecdsa-p256, ed25519, rsa-3072`);
  }
}

/** Issue a gateway certificate: CN=<gateway>, SANs (DNS, IP, email), EKU ipsecIKE + TLS. */
export async function issueCertificate(
  ca: CaMaterial,
  req: { gateway: string; dnsNames: string[]; ipAddresses: string[]; emails?: string[]; keyType: LeafKeyType; validDays: number },
  now = new Date(),
): Promise<IssuedCertificate> {
  for (const ip of req.ipAddresses) {
    if (!isIP(ip)) throw new FleetswanError("CONFIG_INVALID", `ip_addresses: "${ip}" is not an IP address`, { field: "ip_addresses" });
  }
  const caCert = new x509.X509Certificate(ca.certificatePem);
  const caKey = await subtle.importKey("pkcs8", pemToDer(ca.privateKeyPem.reveal().toString("utf8")), CA_ALG, false, ["sign"]);
  const keys = await leafKeys(req.keyType);
  const notAfter = new Date(now.getTime() + req.validDays * 86_400_000);
  const caNotAfter = caCert.notAfter;
  const end = notAfter > caNotAfter ? caNotAfter : notAfter;
  const names: x509.JsonGeneralName[] = [
    ...req.dnsNames.map((value) => ({ type: "dns" as const, value })),
    ...req.ipAddresses.map((value) => ({ type: "ip" as const, value })),
    ...(req.emails ?? []).map((value) => ({ type: "email" as const, value })),
  ];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(
      req.keyType === "rsa-3072" ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment : x509.KeyUsageFlags.digitalSignature,
      true,
    ),
    new x509.ExtendedKeyUsageExtension([EKU_IPSEC_IKE, EKU_SERVER, EKU_CLIENT], false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
  ];
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, false));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${req.gateway}`,
    issuer: caCert.subject,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: end,
    signingAlgorithm: CA_SIGN,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions,
  });
  const pkcs8 = await subtle.exportKey("pkcs8", keys.privateKey);
  return { certificatePem: cert.toString("pem") + "\n", privateKeyPem: new Secret(pem("PRIVATE KEY", pkcs8)), notAfter: end };
}

/** notAfter of a PEM certificate. */
export function certificateNotAfter(certificatePem: string): Date {
  return new x509.X509Certificate(certificatePem).notAfter;
}
