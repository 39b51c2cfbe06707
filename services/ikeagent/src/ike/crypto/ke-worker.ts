/**
 * A crypto worker of KeyExchangePool (ke-offload.ts): answers the responder's IKE_SA_INIT
 * key work (RFC 7296 §1.2, §2.14) for the event loop. While no request waits it makes key
 * pairs for the groups it was asked for (up to STOCK each), so a burst of IKE_SA_INIT
 * requests finds them ready. Each pair is used for one exchange only (ephemeral, as
 * §2.12 recommends when not reusing exponentials), then dropped.
 */
import { parentPort } from "node:worker_threads";
import { createKeyExchange, type KeyExchange } from "./dh.js";
import { fromWire, packKeys, responderKeyExchange, type WorkerAnswer, type WorkerRequest } from "./ke-offload.js";

const STOCK = 32;
const stock = new Map<number, KeyExchange[]>();
let refilling = false;

/** One key pair per turn of the event loop, so requests that arrive meanwhile go first. */
function refill(): void {
  if (refilling) return;
  refilling = true;
  setImmediate(function step() {
    for (const [group, pairs] of stock) {
      if (pairs.length < STOCK) {
        pairs.push(createKeyExchange(group));
        setImmediate(step);
        return;
      }
    }
    refilling = false;
  });
}

function take(group: number): KeyExchange {
  let pairs = stock.get(group);
  if (!pairs) stock.set(group, (pairs = []));
  const kex = pairs.pop() ?? createKeyExchange(group);
  refill();
  return kex;
}

function answer({ id, req }: WorkerRequest, transfer: ArrayBuffer[]): WorkerAnswer {
  try {
    const r = responderKeyExchange(fromWire(req), take(req.group));
    if (!r.ok) return { id, ok: false, invalid: r.invalid };
    const packed = packKeys(r.keys);
    transfer.push(packed.keys);
    // an exact copy: publicValue may be a view of the 8 KiB Buffer pool (see ke-offload.ts own())
    return { id, ok: true, publicValue: new Uint8Array(r.publicValue), ...packed };
  } catch (err) {
    return { id, ok: false, error: (err as Error).message };
  }
}

parentPort!.on("message", (batch: WorkerRequest[]) => {
  const transfer: ArrayBuffer[] = [];
  parentPort!.postMessage(batch.map((r) => answer(r, transfer)), transfer);
});
