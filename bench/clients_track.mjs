// `make bench`, client section: events pushed through the TypeScript client's track() for
// BENCH_SECONDS, shaped like bench/events.lua's batches (mostly VIEWs from many client IPs,
// skewed rule popularity), then close(). Prints one `BENCH_JSON {...}` line.
import { IngestClient } from "../clients/typescript/dist/index.js";

const env = (name, fallback) => process.env[name] ?? fallback;
const rules = Number(env("BENCH_RULES", "10000"));
const seconds = Number(env("BENCH_SECONDS", "12"));
const types = ["COPY", "SAVE", "FORK", "VOTE"];
const highWater = 4000; // queued events at most before the loop yields to the client

const client = new IngestClient({
  baseUrl: env("BENCH_URL"),
  appToken: env("BENCH_TOKEN"),
  flushAt: Number(env("BENCH_FLUSH_AT", "100")),
  maxInFlight: Number(env("BENCH_IN_FLIGHT", "16")),
  maxQueueSize: 10_000,
});

function event() {
  const rule = Math.floor(Math.random() ** 2 * rules) + 1;
  const ip = `10.${(Math.random() * 4) | 0}.${(Math.random() * 256) | 0}.${1 + ((Math.random() * 254) | 0)}`;
  const type = Math.random() < 0.2 ? types[(Math.random() * 4) | 0] : "VIEW";
  return { type, ruleId: `rul_${rule}`, ip };
}

const cpu0 = process.cpuUsage();
const started = performance.now();
const end = started + seconds * 1000;
while (performance.now() < end) {
  while (client.stats.queued < highWater) client.track(event());
  await new Promise((resolve) => setTimeout(resolve, 1));
}
const tracking = (performance.now() - started) / 1000;
const stats = await client.close({ deadlineMs: 30_000 });
const elapsed = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpu0);
console.log(
  "BENCH_JSON " +
    JSON.stringify({
      tracking_s: tracking,
      duration_s: elapsed,
      tracked: stats.tracked,
      delivered: stats.accepted + stats.duplicate + stats.acceptedOrDuplicate,
      failed: stats.failed,
      dropped: stats.dropped,
      requests: stats.requests,
      retries: stats.retries,
      client_cpu_ms_per_batch: ((cpu.user + cpu.system) / 1000) / Math.max(1, stats.batches),
    }),
);
