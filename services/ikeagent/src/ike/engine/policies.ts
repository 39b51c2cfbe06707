/**
 * The connection's policies, owned by the connection and reference-counted by the CHILD SAs
 * that need them (strongSwan's kernel interface keeps a policy entry with a list of users
 * for the same reason). Two CHILD SAs of one connection share the same policies (a rekey,
 * or duplicate IKE SAs when both ends initiate); removing one must not remove what the
 * other still needs.
 *
 * Every change of a key's owners is followed by a sync of that key, serialized per key and
 * computed from the owners at the time it runs (not when it was asked for): the last sync
 * always installs what the current owners need, whatever order installs and removals of
 * CHILD SAs interleave in. A key without owners is deleted, or for an outbound policy of a
 * routed connection turned back into a TRAP policy.
 *
 * `reassert()` compares with the dataplane's policy list and installs what is missing (a
 * dataplane restart without its state file, or anything else that removed them); `missing`
 * names connections whose policies were found missing and not yet restored, so status does
 * not say "up" for a tunnel that carries nothing.
 */
import { dataplane } from "@fleetswan/proto";
import type { Logger } from "@fleetswan/common";
import type { DataplaneApi } from "./dataplane.js";

interface Entry {
  /** owner id -> the policy it wants (the newest owner's version is installed). */
  owners: Map<number, dataplane.Policy>;
  /** The newest owner while known (undefined after it left: found again by a scan). Thousands of CHILD SAs may share one key. */
  newest?: number;
  /** Without owners: install this TRAP policy instead of deleting (routed connection, outbound). */
  trap?: dataplane.Policy;
  connection: string;
  chain: Promise<void>;
  /** What the last sync left in the dataplane (undefined = nothing). */
  installed?: dataplane.Policy;
}

export function policyKey(p: { selector?: dataplane.Selector; direction: dataplane.Direction; mark?: number }): string {
  const s = p.selector;
  return `${s?.src?.address}/${s?.src?.length}>${s?.dst?.address}/${s?.dst?.length} p${s?.protocol ?? 0} ${s?.srcPort ?? 0}>${s?.dstPort ?? 0} d${p.direction} m${p.mark ?? 0}`;
}

/** Same policy in every field (the same key, action, priority, interface, connection and template). */
function samePolicy(a: dataplane.Policy, b: dataplane.Policy): boolean {
  const ta = a.template, tb = b.template;
  return (
    policyKey(a) === policyKey(b) && a.action === b.action && a.priority === b.priority && a.ifId === b.ifId && a.connection === b.connection &&
    (ta === tb || (!!ta && !!tb && ta.src === tb.src && ta.dst === tb.dst && ta.mode === tb.mode && ta.reqid === tb.reqid && ta.protocol === tb.protocol))
  );
}

/** The policy of the key's newest owner (Maps keep insertion order: the last one). */
function newestOwner(e: Entry): dataplane.Policy | undefined {
  if (e.newest === undefined) for (const id of e.owners.keys()) e.newest = id;
  return e.newest === undefined ? undefined : e.owners.get(e.newest);
}

export class PolicyTable {
  readonly #entries = new Map<string, Entry>();
  /** Connections with policies found missing in the dataplane and not yet restored. */
  readonly missing = new Set<string>();

  constructor(
    private readonly dp: DataplaneApi,
    private readonly log: Logger,
  ) {}

  /** `owner` needs these policies: take the references now, install them (resolves when done; throws what the dataplane said). */
  async acquire(owner: number, policies: dataplane.Policy[]): Promise<void> {
    const keys: string[] = [];
    for (let p of policies) {
      const [k, e] = this.#entry(p);
      // CHILD SAs of one connection want the same policy: hold one object for all of them (memory per SA).
      const newest = newestOwner(e);
      if (newest && samePolicy(newest, p)) p = newest;
      e.owners.delete(owner);
      e.owners.set(owner, p); // newest last
      e.newest = owner;
      e.connection = p.connection;
      keys.push(k);
    }
    await Promise.all(keys.map((k) => this.#sync(k, true)));
  }

  /**
   * `owner` no longer needs these policies; those left without owners go (or become the TRAP
   * policy `trapFor(p)` returns, for a routed connection's outbound policies).
   */
  async release(owner: number, policies: dataplane.Policy[], trapFor?: (p: dataplane.Policy) => dataplane.Policy | undefined): Promise<void> {
    const keys: string[] = [];
    for (const p of policies) {
      const k = policyKey(p);
      const e = this.#entries.get(k);
      if (!e || !e.owners.delete(owner)) continue;
      if (e.newest === owner) e.newest = undefined;
      if (!e.owners.size) e.trap = trapFor?.(p);
      keys.push(k);
    }
    await Promise.all(keys.map((k) => this.#sync(k, true)));
  }

  /** Trap policies of a routed connection (installed while no CHILD SA owns the key). */
  async setTrap(policies: dataplane.Policy[]): Promise<void> {
    await Promise.all(policies.map((p) => this.#entry(p)).map(([k, e], i) => ((e.trap = policies[i]), this.#sync(k, true))));
  }
  /** The connection is no longer routed: its trap policies go (unless a CHILD SA owns the key). */
  async clearTrap(policies: dataplane.Policy[]): Promise<void> {
    await Promise.all(policies.map((p) => this.#entry(p)).map(([k, e]) => ((e.trap = undefined), this.#sync(k, true))));
  }
  #entry(p: dataplane.Policy): [string, Entry] {
    const k = policyKey(p);
    let e = this.#entries.get(k);
    if (!e) this.#entries.set(k, (e = { owners: new Map(), connection: p.connection, chain: Promise.resolve() }));
    return [k, e];
  }

  /** Owners of a policy (tests, diagnostics). */
  owners(p: dataplane.Policy): number[] {
    return [...(this.#entries.get(policyKey(p))?.owners.keys() ?? [])];
  }

  /** Serialized per key: make the dataplane hold what the key's owners need now. */
  #sync(k: string, throwErrors: boolean): Promise<void> {
    const e = this.#entries.get(k)!;
    const run = async (): Promise<void> => {
      const want = newestOwner(e) ?? e.trap;
      if (want) {
        await this.dp.addPolicy(want);
        e.installed = want;
      } else {
        // (The entry stays in the table: a later acquire of the key queues behind this delete.)
        const had = e.installed;
        e.installed = undefined;
        if (had) await this.dp.deletePolicy(had.selector!, had.direction, had.mark);
      }
    };
    const next = e.chain.then(run, run);
    e.chain = next.catch(() => undefined);
    return throwErrors ? next : e.chain;
  }

  /**
   * Compares with the dataplane and installs what is missing. Returns the connections
   * whose policies were missing (and re-added, or still missing if that failed).
   */
  async reassert(): Promise<string[]> {
    const present = new Set((await this.dp.listPolicies()).map((s) => (s.policy ? policyKey(s.policy) : "")));
    const hit = new Set<string>();
    const work: Promise<void>[] = [];
    for (const [k, e] of this.#entries) {
      if (!e.installed || present.has(k)) continue;
      hit.add(e.connection);
      this.missing.add(e.connection);
      work.push(this.#sync(k, true));
    }
    if (hit.size) this.log.warn({ connections: [...hit] }, "policies missing in the dataplane: installing them again");
    const results = await Promise.allSettled(work);
    if (results.every((r) => r.status === "fulfilled")) for (const c of hit) this.missing.delete(c);
    return [...hit];
  }
}
