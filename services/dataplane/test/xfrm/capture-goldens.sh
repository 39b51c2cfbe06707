#!/bin/bash
# Regenerates goldens.json: the exact netlink messages iproute2 sends for each
# `ip xfrm` command, captured with strace in a throwaway netns. The host kernel has no
# ESP, so ESP state adds fail, but strace still shows the request ip sent.
# Usage (root): bash capture-goldens.sh > goldens.json
set -euo pipefail
NS=fs-golden-$$
ip netns add "$NS"
trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
K36=0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223
K16=0x000102030405060708090a0b0c0d0e0f
K32=0x101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f
declare -a NAMES CMDS
add() { NAMES+=("$1"); CMDS+=("$2"); }
add policy_add_out_tunnel4 "xfrm policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 1000 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel"
add policy_add_fwd_mark_ifid "xfrm policy add src 10.2.0.0/16 dst 10.1.0.0/16 dir fwd priority 1000 mark 0x5 mask 0xffffffff if_id 7 tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 2 mode tunnel"
add policy_upd_in_ports6 "xfrm policy update src 2001:db8:1::/48 dst 2001:db8:2::/48 proto tcp sport 1234 dport 443 dir in priority 2000 tmpl src 2001:db8::1 dst 2001:db8::2 proto esp reqid 3 mode tunnel"
add policy_add_bypass_udp500 "xfrm policy add src 0.0.0.0/0 dst 0.0.0.0/0 proto udp sport 500 dir out priority 1"
add policy_add_block "xfrm policy add src 10.9.0.0/16 dst 10.8.0.0/16 dir out priority 500 action block"
add policy_add_transport "xfrm policy add src 192.0.2.1/32 dst 192.0.2.2/32 dir out priority 900 tmpl proto esp reqid 4 mode transport"
add policy_delete "xfrm policy delete src 10.1.0.0/16 dst 10.2.0.0/16 dir out"
add policy_delete_mark "xfrm policy delete src 10.2.0.0/16 dst 10.1.0.0/16 dir fwd mark 0x5 mask 0xffffffff"
add policy_get "xfrm policy get src 10.1.0.0/16 dst 10.2.0.0/16 dir out"
add policy_dump "xfrm policy list"
add policy_flush "xfrm policy flush"
add state_add_aead "xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0xc0000001 reqid 1 mode tunnel replay-window 32 aead rfc4106(gcm(aes)) $K36 128"
add state_add_cbc_encap "xfrm state add src 192.0.2.2 dst 192.0.2.1 proto esp spi 0xc0000002 reqid 2 mode tunnel replay-window 64 enc cbc(aes) $K16 auth-trunc hmac(sha256) $K32 128 encap espinudp 4500 4501 0.0.0.0 mark 0x5 mask 0xffffffff if_id 7 limit byte-soft 1000 limit byte-hard 2000 limit packet-soft 10 limit packet-hard 20 limit time-soft 3000 limit time-hard 3600 extra-flag dont-encap-dscp"
add state_add_esn "xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0xc0000003 reqid 1 mode tunnel flag esn replay-window 1024 aead rfc7539esp(chacha20,poly1305) $K36 128"
add state_upd_v6 "xfrm state update src 2001:db8::1 dst 2001:db8::2 proto esp spi 0x00001000 reqid 3 mode tunnel replay-window 32 aead rfc4106(gcm(aes)) $K36 128 sel src 2001:db8:1::/48 dst 2001:db8:2::/48"
add state_add_transport_sel "xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0xc0000004 reqid 4 mode transport replay-window 32 aead rfc4106(gcm(aes)) $K36 128 sel src 192.0.2.1/32 dst 192.0.2.2/32 proto udp dport 53"
add state_delete "xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0xc0000001"
add state_get "xfrm state get src 192.0.2.1 dst 192.0.2.2 proto esp spi 0xc0000001"
add state_dump "xfrm state list"
add state_flush "xfrm state flush proto esp"
add state_allocspi "xfrm state allocspi src 192.0.2.2 dst 192.0.2.1 proto esp mode tunnel reqid 9 min 0xc0000000 max 0xcfffffff"
echo "["
for i in "${!NAMES[@]}"; do
  out=$(ip netns exec "$NS" strace -e trace=sendmsg,sendto -e write=3,4,5,6,7 ip ${CMDS[$i]} 2>&1 >/dev/null || true)
  # the last buffer dumped is the XFRM request (ip sends one per command)
  hex=$(printf '%s\n' "$out" | awk '/^ \* [0-9]+ bytes in buffer/ {h=""; next} /^ \| [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]  / {h=h substr($0, 11, 49)} END {print h}' | tr -d ' ')
  err=$(printf '%s\n' "$out" | grep -vE '^(sendmsg|sendto|\+\+\+|---| \*| \|)' | head -1 | sed 's/"/\\"/g' || true)
  sep=$([ "$i" -lt $(( ${#NAMES[@]} - 1 )) ] && echo , || true)
  printf '  {"name": "%s", "command": "ip %s", "hex": "%s", "ipSaid": "%s"}%s\n' "${NAMES[$i]}" "${CMDS[$i]}" "$hex" "$err" "$sep"
done
echo "]"
