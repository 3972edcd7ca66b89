// Run by the Python suite against a service limited to 60 event requests a minute per client.
import assert from "node:assert/strict";
import { test } from "node:test";

import { IngestClient } from "../dist/index.js";
import { collector, ruleId, service, writeReport } from "./helpers.mjs";

test("429 is retried after Retry-After, and nothing is lost or doubled", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({ ...service(), flushAt: 1, maxInFlight: 8, maxAttempts: 20, onResult });
  const started = Date.now();
  for (let i = 0; i < 64; i++) client.track({ type: "COPY", ruleId: ruleId() });
  const stats = await client.close({ deadlineMs: 60_000 });
  const elapsed = Date.now() - started;
  writeReport({ keys: results.map((r) => r.event.idempotencyKey), stats, elapsed });
  assert.ok((stats.retries["429"] ?? 0) >= 1, JSON.stringify(stats.retries));
  assert.ok(elapsed >= 1000, `Retry-After (at least 1 s) honoured: done in ${elapsed} ms`);
  assert.equal(stats.accepted, 64);
});
