// Unit test for the `ip -s xfrm state` parser used by kernel tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseXfrmState } from './kernel-lab.js';

const OUT = `src 192.0.2.1 dst 192.0.2.2
	proto esp spi 0x00000100 reqid 1 mode tunnel
	replay-window 0 flag af-unspec
	aead rfc4106(gcm(aes)) 0x1111 128
	anti-replay context: seq 0x0, oseq 0x3, bitmap 0x00000000
	lifetime config:
	  limit: soft (INF)(bytes), hard (INF)(bytes)
	lifetime current:
	  312(bytes), 3(packets)
	  add 2024-01-01 00:00:00 use 2024-01-01 00:00:01
	stats:
	  replay-window 0 replay 0 failed 0
src 192.0.2.2 dst 192.0.2.1
	proto esp spi 0x00000200 reqid 1 mode tunnel
	lifetime current:
	  0(bytes), 0(packets)
`;

test('parseXfrmState: SAs with byte/packet counters', () => {
  const sas = parseXfrmState(OUT);
  assert.deepEqual(sas, [
    { src: '192.0.2.1', dst: '192.0.2.2', proto: 'esp', spi: '0x00000100', bytes: 312, packets: 3 },
    { src: '192.0.2.2', dst: '192.0.2.1', proto: 'esp', spi: '0x00000200', bytes: 0, packets: 0 },
  ]);
});
