// Run by the Python suite through a proxy that cuts the connection as the first answers come
// back, after the service has stored their batches: the retries must not store them twice.
import assert from "node:assert/strict";
import { test } from "node:test";

import { IngestClient } from "../dist/index.js";
import { collector, ruleId, service, writeReport } from "./helpers.mjs";

test("a batch whose answer was lost is retried with the same keys and stored once", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({ ...service(), flushAt: 50, maxInFlight: 1, initialBackoffMs: 20, onResult });
  for (let i = 0; i < 100; i++) client.track({ type: "SAVE", ruleId: ruleId() });
  const stats = await client.close({ deadlineMs: 30_000 });
  writeReport({ keys: results.map((r) => r.event.idempotencyKey), stats });
  assert.equal(stats.retries.network, 2, JSON.stringify(stats));
  assert.equal(stats.duplicate, 100, "both batches were stored by their lost first attempt");
  assert.ok(results.every((r) => r.attempts === 2));
});
