/**
 * Dataplane metrics (docs/dataplane.md "Metrics"). Values that the kernel or the
 * backend counts are read at scrape time (collect callbacks), so nothing drifts.
 * Labels are bounded: connection names come from the fleet config, reasons and errnos
 * from fixed sets; SPIs are never labels (they change with every rekey).
 */
import { Counter, Gauge } from "prom-client";
import type { Registry } from "@fleetswan/common";
import type { Dataplane } from "./reconcile.js";
import { dataplane } from "@fleetswan/proto";
import { readXfrmStat } from "./xfrm/xfrm-backend.js";

export interface DataplaneMetricsSources {
  dp: Dataplane;
  /** Netlink counters (kernel mode). */
  netlink?: () => { errorsByErrno: Map<string, number>; decodeErrors: number };
  /** /proc/net/xfrm_stat reader (kernel mode); undefined in other modes. */
  xfrmStat?: () => Map<string, number>;
  /** Userspace datapath drop counters by reason (userspace mode). */
  userspaceDrops?: () => Record<string, number>;
}

export interface DataplaneMetrics {
  /** Count an RPC error by its stable code. */
  rpcError(code: string): void;
}

export function registerDataplaneMetrics(registry: Registry, src: DataplaneMetricsSources): DataplaneMetrics {
  const { dp } = src;
  new Gauge({
    name: "fleetswan_dataplane_sas",
    help: "SAs in the desired state (installed by fleetswan).",
    registers: [registry],
    collect() {
      this.set(dp.sizes().sas);
    },
  });
  new Gauge({
    name: "fleetswan_dataplane_policies",
    help: "Policies in the desired state (including the IKE bypass policies).",
    registers: [registry],
    collect() {
      this.set(dp.sizes().policies);
    },
  });
  const perSa = async (): Promise<Map<string, { bytes: bigint; packets: bigint; labels: { connection: string; direction: string } }>> => {
    const agg = new Map<string, { bytes: bigint; packets: bigint; labels: { connection: string; direction: string } }>();
    for (const s of await dp.listSas().catch(() => [])) {
      const labels = { connection: s.sa?.connection || "unknown", direction: s.sa?.direction === dataplane.Direction.DIRECTION_IN ? "in" : "out" };
      const k = `${labels.connection}|${labels.direction}`;
      const cur = agg.get(k) ?? { bytes: 0n, packets: 0n, labels };
      cur.bytes += s.counters?.bytes ?? 0n;
      cur.packets += s.counters?.packets ?? 0n;
      agg.set(k, cur);
    }
    return agg;
  };
  new Counter({
    name: "fleetswan_dataplane_sa_bytes_total",
    help: "Bytes through the current SAs, by connection and direction (resets when SAs are rekeyed).",
    labelNames: ["connection", "direction"],
    registers: [registry],
    async collect() {
      this.reset();
      for (const v of (await perSa()).values()) this.inc(v.labels, Number(v.bytes));
    },
  });
  new Counter({
    name: "fleetswan_dataplane_sa_packets_total",
    help: "Packets through the current SAs, by connection and direction.",
    labelNames: ["connection", "direction"],
    registers: [registry],
    async collect() {
      this.reset();
      for (const v of (await perSa()).values()) this.inc(v.labels, Number(v.packets));
    },
  });
  if (src.xfrmStat) {
    const read = src.xfrmStat;
    new Counter({
      name: "fleetswan_dataplane_xfrm_errors_total",
      help: "Kernel XFRM error counters from /proc/net/xfrm_stat, by reason (e.g. XfrmInStateSeqError = replay, XfrmInStateProtoError = integrity/decrypt).",
      labelNames: ["reason"],
      registers: [registry],
      collect() {
        this.reset();
        for (const [reason, v] of read()) this.inc({ reason }, v);
      },
    });
  }
  if (src.userspaceDrops) {
    const read = src.userspaceDrops;
    new Counter({
      name: "fleetswan_dataplane_userspace_drops_total",
      help: "Packets dropped by the userspace ESP datapath, by reason (replay, integrity, ...).",
      labelNames: ["reason"],
      registers: [registry],
      collect() {
        this.reset();
        for (const [reason, v] of Object.entries(read())) this.inc({ reason }, v);
      },
    });
  }
  if (src.netlink) {
    const read = src.netlink;
    new Counter({
      name: "fleetswan_dataplane_netlink_errors_total",
      help: "Netlink requests the kernel refused, by errno name; errno=\"decode\" for undecodable messages.",
      labelNames: ["errno"],
      registers: [registry],
      collect() {
        this.reset();
        const s = read();
        for (const [errno, v] of s.errorsByErrno) this.inc({ errno }, v);
        if (s.decodeErrors) this.inc({ errno: "decode" }, s.decodeErrors);
      },
    });
  }
  new Gauge({
    name: "fleetswan_dataplane_event_backlog",
    help: "Events buffered while no ikeagent watches.",
    registers: [registry],
    collect() {
      this.set(dp.backlogSize());
    },
  });
  new Counter({
    name: "fleetswan_dataplane_events_dropped_total",
    help: "Events dropped because the backlog was full.",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(dp.stats.eventsDropped);
    },
  });
  new Counter({
    name: "fleetswan_dataplane_drift_repaired_total",
    help: "SAs and policies re-installed because they vanished or changed behind our back.",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(dp.stats.driftRepaired);
    },
  });
  const rpcErrors = new Counter({
    name: "fleetswan_dataplane_errors_total",
    help: "Failed dataplane API calls, by error code (KERNEL_ERROR, CONFIG_INVALID, ...).",
    labelNames: ["code"],
    registers: [registry],
  });
  return { rpcError: (code) => rpcErrors.inc({ code }) };
}

export { readXfrmStat };
