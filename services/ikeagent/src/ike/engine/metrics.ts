/**
 * The engine's Prometheus metrics (names listed in docs/ikeagent.md "Metrics"). Labels are
 * bounded: states, reasons, outcomes and exchange names are fixed sets; connection names
 * come from configuration.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export interface EngineMetrics {
  ikeSas: Gauge<"state">;
  childSas: Gauge<"state">;
  handshakeSeconds: Histogram<never>;
  rekeySeconds: Histogram<"kind">;
  failures: Counter<"reason">;
  retransmissions: Counter<"exchange">;
  dpd: Counter<"outcome">;
  childBytes: Gauge<"connection" | "direction">;
  childPackets: Gauge<"connection" | "direction">;
  registry: Registry;
  /** Set by the engine: sets ikeSas/childSas from its SA table; called when the metrics are read. */
  refreshSaGauges?: () => void;
}

export function createEngineMetrics(registry = new Registry()): EngineMetrics {
  const r = [registry];
  const m: EngineMetrics = {
    registry,
    ikeSas: new Gauge({ name: "fleetswan_ike_sas", help: "IKE SAs by state (connecting, established, rekeying, deleting)", labelNames: ["state"], registers: r, collect: () => m.refreshSaGauges?.() }),
    childSas: new Gauge({ name: "fleetswan_child_sas", help: "CHILD SAs by state (creating, installed, rekeying, rekeyed, deleting)", labelNames: ["state"], registers: r, collect: () => m.refreshSaGauges?.() }),
    handshakeSeconds: new Histogram({ name: "fleetswan_ike_handshake_duration_seconds", help: "IKE_SA_INIT + IKE_AUTH duration of initiated IKE SAs", buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: r }),
    rekeySeconds: new Histogram({ name: "fleetswan_rekey_duration_seconds", help: "Duration of initiated rekey exchanges (kind=ike|child)", labelNames: ["kind"], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: r }),
    failures: new Counter({ name: "fleetswan_ike_failures_total", help: "Negotiation failures by reason code", labelNames: ["reason"], registers: r }),
    retransmissions: new Counter({ name: "fleetswan_ike_retransmissions_total", help: "IKE requests retransmitted, by exchange", labelNames: ["exchange"], registers: r }),
    dpd: new Counter({ name: "fleetswan_dpd_total", help: "Liveness checks by outcome (alive, dead)", labelNames: ["outcome"], registers: r }),
    childBytes: new Gauge({ name: "fleetswan_child_sa_bytes", help: "Bytes through the connection's installed CHILD SAs (direction=in|out)", labelNames: ["connection", "direction"], registers: r }),
    childPackets: new Gauge({ name: "fleetswan_child_sa_packets", help: "Packets through the connection's installed CHILD SAs (direction=in|out)", labelNames: ["connection", "direction"], registers: r }),
  };
  return m;
}
