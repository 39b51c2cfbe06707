/** Shared fleet-spec fixtures for the controller's tests. */
export const GOOD_PSK = "q8Vt3nZpR7wLk2XcYb9JmF4sHd6Ga1Ue";

export const BASIC = `version: 1
defaults:
  dpd: { delay: 30s, timeout: 150s, action: restart }
  start: route
proposals:
  strong:
    ike: [aes256gcm16-prfsha384-curve25519]
    esp: [aes256gcm16]
gateways:
  - name: gw-a
    id: gw-a.example.net
    addresses: [192.0.2.1]
    subnets: [10.1.0.0/16]
    labels: { site: paris }
  - name: gw-b
    addresses: [192.0.2.2]
    subnets: [10.2.0.0/16]
  - name: gw-c
    addresses: [192.0.2.3]
    subnets: [10.3.0.0/16]
    backend: userspace
    policy_groups:
      private-or-clear: [198.51.100.0/24]
connections:
  - mesh: [gw-a, gw-b, gw-c]
    proposals: strong
peers:
  - name: partner
    gateway: gw-a
    address: 203.0.113.9
    id: vpn.partner.example
    psk: "${GOOD_PSK}"
    subnets: [172.16.0.0/24]
`;

/** A resolver for tests: a fixed table, never the network. */
export const fakeDns = (table: Record<string, string[]> = {}) => async (host: string): Promise<string[]> => {
  const r = table[host];
  if (!r) throw new Error("ENOTFOUND");
  return r;
};
