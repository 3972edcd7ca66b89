// Shared by the tests: the live service they run against comes from the environment
// (the Python suite starts it and sets these; see tests/test_client_typescript.py).
import { writeFileSync } from "node:fs";

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through the Python suite`);
  return value;
}

export const service = () => ({
  baseUrl: env("INGEST_URL"),
  appToken: env("INGEST_APP_TOKEN"),
  cronSecret: process.env.INGEST_CRON_SECRET,
});

export const ruleId = () => env("INGEST_RULE_ID");

/** Wait until `check()` is true, polling; throws after `timeoutMs`. */
export async function waitFor(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Hand figures to the Python side, which checks them against the database. */
export function writeReport(report) {
  const path = process.env.INGEST_REPORT;
  if (path) writeFileSync(path, JSON.stringify(report));
}

export function collector() {
  const results = [];
  return { results, onResult: (result) => results.push(result) };
}
