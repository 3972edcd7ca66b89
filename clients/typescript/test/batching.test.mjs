import assert from "node:assert/strict";
import { test } from "node:test";

import { IngestClient } from "../dist/index.js";
import { collector, ruleId, service, waitFor } from "./helpers.mjs";

test("a batch is sent as soon as flushAt events are queued", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({ ...service(), flushAt: 10, flushIntervalMs: 600_000, maxInFlight: 1, onResult });
  for (let i = 0; i < 25; i++) client.track({ type: "COPY", ruleId: ruleId() });
  await waitFor(() => results.length === 20, 10_000, "two full batches");
  assert.equal(client.stats.batches, 2);
  assert.equal(client.stats.queued, 5, "the last five wait for the next flush");
  assert.ok(results.every((r) => r.status === "accepted" && r.attempts === 1));
  await client.close();
  assert.equal(results.length, 25);
  assert.equal(client.stats.batches, 3);
  assert.equal(client.stats.accepted, 25);
  assert.equal(new Set(results.map((r) => r.event.idempotencyKey)).size, 25, "one key per event");
});

test("a partial batch is sent after flushIntervalMs without a flush call", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({ ...service(), flushAt: 100, flushIntervalMs: 300, onResult });
  const started = Date.now();
  for (let i = 0; i < 3; i++) client.track({ type: "SAVE", ruleId: ruleId(), ts: new Date() });
  await new Promise((resolve) => setTimeout(resolve, 150));
  assert.equal(results.length, 0, "nothing sent before the interval");
  await waitFor(() => results.length === 3, 5_000, "the timed flush");
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 300, `sent after ${elapsed} ms`);
  assert.equal(client.stats.batches, 1);
  assert.deepEqual(results.map((r) => r.status), ["accepted", "accepted", "accepted"]);
  await client.close();
});

test("rejected events come back with their reason, the others are accepted", async () => {
  const { results, onResult } = collector();
  const client = new IngestClient({ ...service(), onResult });
  client.track({ type: "VOTE", ruleId: ruleId() });
  client.track({ type: "VOTE", ruleId: "rul_does_not_exist" });
  client.track({ type: "VOTE", ruleId: ruleId(), ts: "2001-01-01T00:00:00Z" });
  await client.flush();
  assert.deepEqual(
    results.map((r) => [r.status, r.reason]),
    [["accepted", undefined], ["rejected", "unknown_rule"], ["rejected", "ts_too_old"]],
  );
  await client.close();
});

test("the other endpoints: health, search, crawl import, rollup and search rebuild", async () => {
  const client = new IngestClient(service());
  const health = await client.health();
  assert.equal(health.status, "ok");
  assert.equal(health.database.reachable, true);
  const found = await client.search({ q: "client", limit: 5 });
  assert.equal(found.query, "client");
  assert.ok(Array.isArray(found.results));
  const report = await client.importCrawl({
    sourceId: process.env.INGEST_SOURCE_ID,
    items: [{ externalId: "ts-1", url: "https://example.com/ts-1", title: "From the TypeScript client" }],
  });
  assert.deepEqual([report.created, report.items[0]?.status], [1, "created"]);
  const dry = await client.triggerRollup({ dryRun: true, daysToProcess: 1 });
  assert.equal(dry.status, "dry_run");
  const queued = await client.rebuildSearch();
  assert.equal(queued.status, "queued");
  await client.close();
});

test("a refused request is a typed error with the service's code", async () => {
  const client = new IngestClient({ ...service(), appToken: "not-the-token" });
  await assert.rejects(client.search({ q: "x" }), (error) => {
    assert.equal(error.name, "IngestHttpError");
    assert.equal(error.status, 401);
    assert.equal(error.retriable, false);
    assert.ok(error.requestId);
    return true;
  });
  await client.close();
});
