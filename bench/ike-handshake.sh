#!/usr/bin/env bash
# IKEv2 handshake benchmark: the same load generator (`fleetswan bench ike`: IKE_SA_INIT +
# IKE_AUTH with PSK, aes256gcm16-prfsha256-curve25519, one CHILD SA aes256gcm16) against
#   (a) Debian's strongSwan charon 5.9.8 as responder (kernel-libipsec: userspace SAs, no
#       kernel ESP; routes off; DoS protection off for the one source address), and
#   (b) the fleetswan responder (`fleetswan ikeagent --dataplane fake`),
# each in its own fresh process in a network namespace, the generator in another one,
# interleaved a,b,a,b... so machine noise hits both. Each responder first gets --warmup
# handshakes that are not measured (node's JIT warms up; charon is unaffected by it, but
# kernel-libipsec keeps its SAs in a linked list, so every SA held makes charon's next SA
# install slower: keep -n moderate). Prints a table (every run, then the medians and the
# ratio) and the memory per established IKE SA with --mem-sas SAs held (no warm-up there).
#
# usage: bench/ike-handshake.sh [-n 4000] [--warmup 1000] [-c 64] [--workers 2] [--runs 3] [--mem-sas 10000] [--keep-logs] [--only charon|fleetswan]
# Needs root, /usr/lib/ipsec/charon, swanctl and a build (npx tsc -b services/ikeagent packages/cli).
set -euo pipefail

N=4000 WARMUP=1000 C=64 WORKERS=2 RUNS=3 MEM=10000 KEEP=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -c) C=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --mem-sas) MEM=$2; shift 2 ;;
    --keep-logs) KEEP=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FS="$ROOT/bin/fleetswan.js"
CHARON=/usr/lib/ipsec/charon
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
[ -x "$CHARON" ] && command -v swanctl >/dev/null || { echo "needs strongSwan: $CHARON and swanctl" >&2; exit 1; }
[ -f "$ROOT/services/ikeagent/dist/src/bench/ike.js" ] || { echo "build first: npx tsc -b services/ikeagent packages/cli" >&2; exit 1; }

IKE=aes256gcm16-prfsha256-curve25519 ESP=aes256gcm16
PSK="bench pre-shared key, 32+ bytes long"
NI=ix-bi-$$ NR=ix-br-$$ I_ADDR=192.0.2.1 R_ADDR=192.0.2.2
D=$(mktemp -d /tmp/ix-ikebench.XXXXXX)
RESP_PID="" RESP_KIND=""

stop_responder() {
  # SIGKILL: nothing is measured after a run, and a graceful charon would first send an
  # INFORMATIONAL delete for each of its thousands of IKE SAs.
  if [ -n "$RESP_PID" ] && [ -n "${FS_PROFILE_DIR:-}" ] && [ "$RESP_KIND" = fleetswan ]; then
    # profiling: node writes the .cpuprofile on a clean exit (SIGTERM; SAs are kept, no deletes)
    kill -TERM "$RESP_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$RESP_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -n "$RESP_PID" ]; then
    kill -9 "$RESP_PID" 2>/dev/null || true
    wait "$RESP_PID" 2>/dev/null || true
  fi
  RESP_PID=""
  # the next responder needs UDP 500 free
  for _ in $(seq 100); do ip netns exec "$NR" ss -Huln 'sport = :500' 2>/dev/null | grep -q . || break; sleep 0.1; done
}
cleanup() {
  stop_responder
  ip netns del "$NI" 2>/dev/null || true
  ip netns del "$NR" 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "logs kept in $D" >&2; else rm -rf "$D"; fi
}
trap cleanup EXIT INT TERM

ip netns add "$NI"; ip netns add "$NR"
ip -n "$NI" link add veth0 type veth peer name veth0 netns "$NR"
ip -n "$NI" addr add "$I_ADDR/24" dev veth0; ip -n "$NR" addr add "$R_ADDR/24" dev veth0
ip -n "$NR" addr add 10.2.0.1/32 dev lo   # kernel-libipsec routes the CHILD SA's subnet via a local address in it
for ns in "$NI" "$NR"; do ip -n "$ns" link set lo up; ip -n "$ns" link set veth0 up; done
# Bigger socket buffers: bursts of C requests must not be dropped (a retransmit is seconds).
for ns in "$NI" "$NR"; do ip netns exec "$ns" sysctl -qw net.core.rmem_default=4194304 net.core.rmem_max=8388608 2>/dev/null || true; done

# ----------------------------------------------------------------- charon (a) --
mkdir -p "$D/charon/run"
cat > "$D/charon/strongswan.conf" <<EOF
charon {
  load = random nonce openssl pem pkcs1 pkcs8 x509 pubkey curve25519 kdf kernel-libipsec kernel-netlink socket-default vici
  # one source address for every SA: no DoS protection, no cookies, no half-open limits
  dos_protection = no
  block_threshold = 1000000
  cookie_threshold = 1000000
  cookie_threshold_ip = 1000000
  init_limit_half_open = 0
  init_limit_job_load = 0
  # a hashed IKE SA table (the default is one bucket: a list scan per lookup)
  ikesa_table_size = 16384
  ikesa_table_segments = 16
  install_routes = no
  install_virtual_ip = no
  plugins {
    vici {
      socket = unix://$D/charon/charon.vici
    }
  }
  # level 0: one line per established IKE SA and one per CHILD SA, as fleetswan's info level
  filelog {
    main {
      path = $D/charon/charon.log
      default = ${CHARON_LOG_LEVEL:-0}
    }
  }
}
swanctl {
  load = random openssl pem pkcs1 pkcs8 x509 pubkey
}
EOF
cat > "$D/charon/swanctl.conf" <<EOF
connections {
  bench {
    version = 2
    local_addrs = $R_ADDR
    remote_addrs = %any
    proposals = $IKE
    unique = no
    mobike = no
    local {
      auth = psk
      id = bench-r.example.test
    }
    remote {
      auth = psk
      id = %any
    }
    children {
      net {
        local_ts = 10.2.0.0/16
        remote_ts = 10.1.0.0/16
        esp_proposals = $ESP
        mode = tunnel
      }
    }
  }
}
secrets {
  ike-bench {
    secret = "$PSK"
  }
}
EOF

start_charon() {
  rm -f "$D/charon/run/charon.pid" "$D/charon/charon.vici" "$D/charon/charon.log"
  ip netns exec "$NR" sh -c "mount --bind '$D/charon/run' /run && STRONGSWAN_CONF='$D/charon/strongswan.conf' exec $CHARON" >>"$D/charon/stdout.log" 2>&1 &
  RESP_PID=$! RESP_KIND=charon
  for _ in $(seq 100); do [ -S "$D/charon/charon.vici" ] && break; sleep 0.1; done
  STRONGSWAN_CONF="$D/charon/strongswan.conf" swanctl --load-all --file "$D/charon/swanctl.conf" --uri "unix://$D/charon/charon.vici" >"$D/charon/swanctl.log" 2>&1 \
    || { cat "$D/charon/swanctl.log" >&2; exit 1; }
}

# ------------------------------------------------------- fleetswan responder (b) --
mkdir -p "$D/fleetswan"
cat > "$D/fleetswan/agent.yaml" <<EOF
gateway: bench-r
secrets:
  psk-bench:
    psk: "$PSK"
connections:
  - name: bench
    local:
      addresses: [$R_ADDR]
      id: bench-r.example.test
      subnets: [10.2.0.0/16]
      auth: psk
    remote:
      addresses: ["%any"]
      id: "%any"
      subnets: [10.1.0.0/16]
      auth: psk
    ike_proposals: [$IKE]
    esp_proposals: [$ESP]
    unique_ids: false
    dpd_delay_seconds: 0     # as charon's default (dpd_delay = 0s); the generator answers no DPD
    secret_ref: psk-bench
EOF

start_fleetswan() {
  : >"$D/fleetswan/agent.log"   # one log per run: "ikeagent running" below must be this run's
  # FS_PROFILE_DIR=DIR: a CPU profile of each fleetswan responder (node --cpu-prof; bench/ike/cpuprofile-top.mjs);
  # FS_AGENT_ARGS: more ikeagent options (e.g. "--crypto-workers 0": IKE_SA_INIT key work on the event loop)
  ip netns exec "$NR" node ${FS_PROFILE_DIR:+--cpu-prof --cpu-prof-dir="$FS_PROFILE_DIR"} "$FS" ikeagent --config "$D/fleetswan/agent.yaml" --dataplane fake --control-socket "" \
    --metrics-port=-1 --address "$R_ADDR" --log-level info ${FS_AGENT_ARGS:-} >>"$D/fleetswan/agent.log" 2>&1 &
  RESP_PID=$! RESP_KIND=fleetswan
  for _ in $(seq 100); do grep -q "ikeagent running" "$D/fleetswan/agent.log" 2>/dev/null && break; sleep 0.1; done
}

# ------------------------------------------------------------------------ runs --
RESULTS="$D/results.jsonl"
: >"$RESULTS"
warmup() {
  [ "$WARMUP" -gt 0 ] || return 0
  ip netns exec "$NI" node "$FS" bench ike "$R_ADDR" -n "$WARMUP" -c "$C" --workers "$WORKERS" --ike "$IKE" --esp "$ESP" \
    --psk "$PSK" --local "$I_ADDR" --label warmup --json >/dev/null || true
}
bench() { # label count settle-ms
  ip netns exec "$NI" node "$FS" bench ike "$R_ADDR" -n "$2" -c "$C" --workers "$WORKERS" --ike "$IKE" --esp "$ESP" \
    --psk "$PSK" --local "$I_ADDR" --pid "$RESP_PID" --settle-ms "$3" --label "$1" --json >>"$RESULTS" || true
  tail -n1 "$RESULTS" | node -e 'const r=JSON.parse(require("fs").readFileSync(0,"utf8"));const t=r.responder.threads.slice(0,4).map((x)=>`${x.name} ${(100*x.busy).toFixed(0)}%`).join(" ");process.stderr.write(`  ${r.label}: ${r.done}/${r.count} in ${r.seconds.toFixed(2)} s = ${r.rate.toFixed(0)}/s, responder ${r.responder.cpuMsPerHandshake.toFixed(3)} ms CPU/handshake (threads: ${t}), generator ${r.generatorCpuMsPerHandshake.toFixed(3)} ms/handshake, host ${(100*r.hostBusy).toFixed(0)}% busy of ${r.hostCpus} CPUs${r.failed?`, ${r.failed} FAILED ${JSON.stringify(r.errors)}`:""}\n`)'
}

echo "IKEv2 handshakes: $N per run after $WARMUP not measured, $C in flight, $WORKERS generator threads, $RUNS runs each, $IKE / $ESP, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$RUNS"); do
  if [ "$ONLY" != fleetswan ]; then start_charon; warmup; bench charon "$N" 0; stop_responder; fi
  if [ "$ONLY" != charon ]; then start_fleetswan; warmup; bench fleetswan "$N" 0; stop_responder; fi
done
if [ "$MEM" -gt 0 ]; then
  echo "memory: $MEM SAs held" >&2
  if [ "$ONLY" != fleetswan ]; then start_charon; bench charon-mem "$MEM" 2000; stop_responder; fi
  if [ "$ONLY" != charon ]; then start_fleetswan; bench fleetswan-mem "$MEM" 2000; stop_responder; fi
fi

node - "$RESULTS" <<'EOF'
const fs = require("fs");
const rows = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN; };
const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "-");
const line = (cols) => console.log(cols.map((c, i) => (i === 0 ? String(c).padEnd(16) : String(c).padStart(12))).join(" "));
line(["responder", "handshakes/s", "p50 ms", "p99 ms", "CPU ms/hs", "RSS MiB", "KiB/SA", "failed"]);
for (const r of rows) line([r.label, f(r.rate), f(r.p50Ms, 1), f(r.p99Ms, 1), f(r.responder?.cpuMsPerHandshake, 3), f(r.responder?.rssAfter / 2 ** 20, 1), f(r.responder?.rssPerSa / 1024, 2), r.failed]);
const sum = {};
for (const who of ["charon", "fleetswan"]) {
  const rs = rows.filter((r) => r.label === who);
  if (!rs.length) continue;
  const rates = rs.map((r) => r.rate), cpu = rs.map((r) => r.responder.cpuMsPerHandshake);
  sum[who] = { rate: med(rates), cpu: med(cpu), p50: med(rs.map((r) => r.p50Ms)), p99: med(rs.map((r) => r.p99Ms)) };
  console.log(`${who.padEnd(10)} median ${f(sum[who].rate)} handshakes/s (runs ${rates.map((x) => f(x)).join(", ")}), p50 ${f(sum[who].p50, 1)} ms, p99 ${f(sum[who].p99, 1)} ms, responder CPU ${f(sum[who].cpu, 3)} ms/handshake (runs ${cpu.map((x) => f(x, 3)).join(", ")})`);
}
if (sum.charon && sum.fleetswan) {
  console.log(`ratio fleetswan/charon: rate ${(sum.fleetswan.rate / sum.charon.rate).toFixed(2)}x (goal >= 1.5x), responder CPU per handshake ${(sum.fleetswan.cpu / sum.charon.cpu).toFixed(2)}x`);
}
for (const r of rows.filter((r) => r.label.endsWith("-mem"))) {
  console.log(`memory ${r.label.replace("-mem", "").padEnd(10)} ${r.done} SAs held: RSS ${f(r.responder.rssBefore / 2 ** 20, 1)} -> ${f(r.responder.rssAfter / 2 ** 20, 1)} MiB = ${f(r.responder.rssPerSa / 1024, 2)} KiB per IKE SA (with its CHILD SA)`);
}
EOF
