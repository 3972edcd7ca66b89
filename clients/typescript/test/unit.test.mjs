// The client's own rules, against a scripted `fetch` (no service needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { IngestClient, IngestClosedError, IngestHttpError, MAX_BODY_BYTES } from "../dist/index.js";
import { collector } from "./helpers.mjs";

/** A fetch answering from `script` in order (the last answer repeats); records the calls. */
function scripted(script) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init, at: Date.now() });
    const next = script[Math.min(calls.length - 1, script.length - 1)];
    if (next instanceof Error) throw next;
    const events = JSON.parse(init.body ?? '{"events": []}').events ?? [];
    const body = next.body ?? { accepted: events.length, duplicates: 0, rejected: [] };
    return new Response(JSON.stringify(body), { status: next.status, headers: next.headers ?? {} });
  };
  return { fetch, calls };
}

const base = { baseUrl: "http://ingest.invalid", appToken: "t" };
const error = (code) => ({ error: { code, message: code, details: [] } });

test("Retry-After is honoured on 503 and 429; other failures back off", async () => {
  const { fetch, calls } = scripted([
    { status: 503, headers: { "retry-after": "1" }, body: error("database_unavailable") },
    { status: 429, headers: { "retry-after": "1" }, body: error("rate_limited") },
    new TypeError("fetch failed"),
    { status: 202 },
  ]);
  const client = new IngestClient({ ...base, fetch, initialBackoffMs: 50 });
  client.track({ type: "VIEW", ruleId: "r" });
  await client.flush();
  assert.equal(calls.length, 4);
  assert.ok(calls[1].at - calls[0].at >= 990, "waited Retry-After after the 503");
  assert.ok(calls[2].at - calls[1].at >= 990, "waited Retry-After after the 429");
  const backoff = calls[3].at - calls[2].at;
  assert.ok(backoff >= 50 && backoff < 900, `backed off ${backoff} ms after the network error`);
  assert.deepEqual(client.stats.retries, { 503: 1, 429: 1, network: 1 });
  assert.equal(client.stats.accepted, 1);
  const sent = calls.map((c) => JSON.parse(c.init.body).events[0].idempotencyKey);
  assert.equal(new Set(sent).size, 1, "every attempt carries the same key");
});

test("a non-retriable answer fails the batch at once, with a typed error", async () => {
  const { fetch, calls } = scripted([{ status: 400, body: error("validation_failed") }]);
  const { results, onResult } = collector();
  const client = new IngestClient({ ...base, fetch, onResult });
  client.track({ type: "VIEW", ruleId: "r" });
  await client.flush();
  assert.equal(calls.length, 1);
  assert.equal(results[0].status, "failed");
  assert.ok(results[0].error instanceof IngestHttpError);
  assert.deepEqual([results[0].error.status, results[0].error.code], [400, "validation_failed"]);
});

test("attempts are bounded", async () => {
  const { fetch, calls } = scripted([new TypeError("fetch failed")]);
  const { results, onResult } = collector();
  const client = new IngestClient({ ...base, fetch, maxAttempts: 3, initialBackoffMs: 1, onResult });
  client.track({ type: "VIEW", ruleId: "r" });
  await client.flush();
  assert.equal(calls.length, 3);
  assert.equal(results[0].status, "failed");
  assert.equal(results[0].error.name, "IngestNetworkError");
  assert.equal(results[0].attempts, 3);
});

test("a batch over the service's body limit is split", async () => {
  const { fetch, calls } = scripted([{ status: 202 }]);
  const client = new IngestClient({ ...base, fetch, flushAt: 500 });
  const ip = "x".repeat(Math.ceil((MAX_BODY_BYTES / 500) * 1.5));
  for (let i = 0; i < 500; i++) client.track({ type: "VIEW", ruleId: "r", ip });
  await client.flush();
  assert.ok(calls.length >= 2);
  assert.ok(calls.every((c) => new TextEncoder().encode(c.init.body).length <= MAX_BODY_BYTES));
  assert.equal(client.stats.accepted, 500);
});

test("close() fails what it cannot deliver by its deadline, and returns in time", async () => {
  const { fetch } = scripted([{ status: 503, headers: { "retry-after": "30" }, body: error("x") }]);
  const { results, onResult } = collector();
  const client = new IngestClient({ ...base, fetch, flushAt: 2, maxInFlight: 1, onResult });
  for (let i = 0; i < 5; i++) client.track({ type: "VIEW", ruleId: "r" });
  const started = Date.now();
  const stats = await client.close({ deadlineMs: 300 });
  assert.ok(Date.now() - started < 2000);
  assert.equal(stats.failed, 5);
  assert.ok(results.every((r) => r.status === "failed" && r.error instanceof IngestClosedError));
});

test("a callback that throws does not stop delivery", async () => {
  const { fetch } = scripted([{ status: 202 }]);
  let calls = 0;
  const client = new IngestClient({
    ...base,
    fetch,
    onResult: () => {
      calls += 1;
      throw new Error("caller bug");
    },
  });
  client.track({ type: "VIEW", ruleId: "r" });
  client.track({ type: "VIEW", ruleId: "r" });
  await client.close();
  assert.equal(calls, 2);
  assert.equal(client.stats.accepted, 2);
});

test("flushAt is bounded by the service's batch limit", () => {
  assert.throws(() => new IngestClient({ ...base, flushAt: 501 }), RangeError);
});
