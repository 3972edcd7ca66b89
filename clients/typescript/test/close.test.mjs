// Run by the Python suite, which then counts the stored rows: a process that tracks events and
// closes its client before exiting loses none that track() took.
import assert from "node:assert/strict";
import { test } from "node:test";

import { IngestClient } from "../dist/index.js";
import { collector, ruleId, service, writeReport } from "./helpers.mjs";

test("close() delivers everything queued; what did not fit is dropped and counted", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({ ...service(), flushAt: 100, maxQueueSize: 1500, maxInFlight: 2, onResult });
  const taken = [];
  for (let i = 0; i < 2000; i++) {
    const key = `close-${i}`;
    if (client.track({ type: "COPY", ruleId: ruleId(), idempotencyKey: key })) taken.push(key);
  }
  const stats = await client.close({ deadlineMs: 30_000 });
  writeReport({ taken, stats });
  // Sends started while tracking, so a few more than maxQueueSize fit.
  assert.ok(taken.length >= 1500 && taken.length < 2000, `took ${taken.length}`);
  assert.equal(stats.dropped, 2000 - taken.length);
  assert.equal(results.filter((r) => r.status === "dropped" && r.reason === "queue_full").length, stats.dropped);
  assert.equal(stats.failed, 0);
  assert.equal(client.track({ type: "VIEW", ruleId: ruleId() }), false, "closed: dropped");
  assert.equal(results.at(-1).reason, "closed");
});
