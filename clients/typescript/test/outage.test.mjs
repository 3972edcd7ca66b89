// Run by the Python suite while the service's database is down: it is started again a few
// seconds later (tests/faults/test_client_outage.py), and the database is checked afterwards.
import assert from "node:assert/strict";
import { test } from "node:test";

import { IngestClient } from "../dist/index.js";
import { collector, ruleId, service, writeReport } from "./helpers.mjs";

test("503s during a database outage are retried until every event is stored", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({
    ...service(),
    flushAt: 25,
    flushIntervalMs: 50,
    maxAttempts: 60,
    maxBackoffMs: 500,
    onResult,
  });
  for (let i = 0; i < 50; i++) client.track({ type: "FORK", ruleId: ruleId() });
  const stats = await client.close({ deadlineMs: 60_000 });
  writeReport({ keys: results.map((r) => r.event.idempotencyKey), stats });
  assert.ok((stats.retries["503"] ?? 0) >= 1, `retried on 503: ${JSON.stringify(stats.retries)}`);
  assert.equal(results.length, 50);
  const delivered = results.filter((r) => ["accepted", "duplicate"].includes(r.status));
  assert.equal(delivered.length, 50, JSON.stringify(results.filter((r) => !delivered.includes(r))));
});
