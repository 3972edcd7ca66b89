/**
 * The ingest service's client: `track()` queues engagement events and sends them in batches
 * (by size and by time), with an idempotency key per event, retries with backoff and a bounded
 * queue; typed calls cover the other endpoints the main API uses.
 */

import { IngestClosedError, IngestError, IngestHttpError, IngestNetworkError, isRetriableStatus } from "./errors.js";
import type { components, paths } from "./schema.js";

type Schemas = components["schemas"];
export type EventType = Schemas["Event"]["type"];
export type Health = Schemas["Health"];
export type CrawlBatch = Omit<Schemas["CrawlBatch"], "items"> & { items: Schemas["CrawlItem"][] };
export type CrawlItem = Schemas["CrawlItem"];
export type CrawlReport = Schemas["CrawlReport"];
export type RollupRequest = Schemas["RollupRequest"];
export type RollupDryRun = Schemas["RollupDryRun"];
export type JobQueued = Schemas["JobQueued"];
export type SearchParams = NonNullable<paths["/internal/search"]["get"]["parameters"]["query"]>;
export type SearchResults = Schemas["SearchResults"];
export type EventIngestReport = Schemas["EventIngestReport"];

/** The service's limit of events per request. */
export const MAX_BATCH = 500;
/** The service's limit of a request body of `POST /ingest/events`. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** One event as `track()` takes it: the service's `Event`, with `ts` also as a `Date`. */
// Picked, not omitted: the document lets an event carry other fields (ignored), so `Event`
// has an index signature, and Omit over it would lose the named fields' types.
type EventFields = Pick<Schemas["Event"], "type" | "ruleId" | "userId">;
export type TrackEvent = EventFields & {
  ts?: string | Date | null;
  ip?: string | null;
  idempotencyKey?: string | null;
};
/** An event as it was sent: `ts` as ISO-8601 text, `idempotencyKey` always set. */
export type SentEvent = EventFields & {
  ts?: string | null;
  ip?: string | null;
  idempotencyKey: string;
};

/**
 * What became of one event.
 * - `accepted`: stored; `duplicate`: the service already had it (its key was stored by an
 *   earlier attempt or event: the service stores every other valid event);
 * - `accepted_or_duplicate`: one of the two (a batch whose answer had both, and the service
 *   counts them per batch);
 * - `rejected`: the service refused this event (`reason`: `unknown_rule`, `ts_too_old`, ...);
 *   retrying it would not help;
 * - `failed`: not delivered (`error`): attempts exhausted, a non-retriable answer to the whole
 *   batch, or `close()`'s deadline;
 * - `dropped`: never queued (`reason`: `queue_full` or `closed`); `track()` returned false.
 */
export type EventStatus =
  | "accepted"
  | "duplicate"
  | "accepted_or_duplicate"
  | "rejected"
  | "failed"
  | "dropped";

export interface EventResult {
  event: SentEvent;
  status: EventStatus;
  reason?: string;
  error?: IngestError;
  /** Requests made for this event's batch (0 when it was dropped). */
  attempts: number;
}

export interface ClientOptions {
  /** The service's base URL, e.g. `http://ingest.internal:8787`. */
  baseUrl: string;
  /** `INGEST_APP_TOKEN` (events, crawl import, search). */
  appToken?: string;
  /** `CRON_SECRET` (rollup trigger, search rebuild). */
  cronSecret?: string;
  /** Send a batch when this many events are queued (default 100, at most 500). */
  flushAt?: number;
  /** Send what is queued at most this long after the first of it was queued (default 1000). */
  flushIntervalMs?: number;
  /** Events held at most (queued, not in flight); `track()` drops beyond (default 10000). */
  maxQueueSize?: number;
  /** Batches in flight at once (default 4). */
  maxInFlight?: number;
  /** Requests per batch or call at most, the first included (default 8). */
  maxAttempts?: number;
  /** First backoff delay (default 200 ms), doubled per attempt up to `maxBackoffMs`. */
  initialBackoffMs?: number;
  /** Longest backoff delay (default 10000 ms); a longer `Retry-After` is still honoured. */
  maxBackoffMs?: number;
  /** One request's timeout (default 10000 ms). */
  requestTimeoutMs?: number;
  /** Called once per tracked event with what became of it. Exceptions are caught and ignored. */
  onResult?: (result: EventResult) => void;
  /** A `fetch` to use instead of the platform's. */
  fetch?: typeof fetch;
}

export interface ClientStats {
  queued: number;
  inFlightBatches: number;
  tracked: number;
  accepted: number;
  duplicate: number;
  acceptedOrDuplicate: number;
  rejected: number;
  failed: number;
  dropped: number;
  batches: number;
  requests: number;
  /** Attempts after the first, by cause: `network`, `429`, `503`, ... */
  retries: Record<string, number>;
}

export interface CloseOptions {
  /** Longest wait for the queue to drain (default 10000 ms); what is left then `failed`. */
  deadlineMs?: number;
}

interface Queued {
  seq: number;
  event: SentEvent;
}

interface Batch {
  firstSeq: number;
  done: Promise<void>;
}

const DEFAULTS = {
  flushAt: 100,
  flushIntervalMs: 1000,
  maxQueueSize: 10_000,
  maxInFlight: 4,
  maxAttempts: 8,
  initialBackoffMs: 200,
  maxBackoffMs: 10_000,
  requestTimeoutMs: 10_000,
};

const encoder = new TextEncoder();

export class IngestClient {
  readonly stats: ClientStats = {
    queued: 0,
    inFlightBatches: 0,
    tracked: 0,
    accepted: 0,
    duplicate: 0,
    acceptedOrDuplicate: 0,
    rejected: 0,
    failed: 0,
    dropped: 0,
    batches: 0,
    requests: 0,
    retries: {},
  };

  private readonly options: Required<Omit<ClientOptions, "appToken" | "cronSecret" | "onResult" | "fetch">>;
  private readonly appToken: string | undefined;
  private readonly cronSecret: string | undefined;
  private readonly onResult: ((result: EventResult) => void) | undefined;
  private readonly fetchImpl: typeof fetch;
  private queue: Queued[] = [];
  private readonly inFlight = new Set<Batch>();
  private nextSeq = 0;
  private forcedThrough = -1;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private readonly waiters: { through: number; resolve: () => void }[] = [];
  private closing = false;
  private stopped = false;
  /** What to cancel when `close()` gives up: requests in flight and retry sleeps. */
  private readonly onStop = new Set<() => void>();

  constructor(options: ClientOptions) {
    const flushAt = options.flushAt ?? DEFAULTS.flushAt;
    if (!Number.isInteger(flushAt) || flushAt < 1 || flushAt > MAX_BATCH) {
      throw new RangeError(`flushAt must be an integer from 1 to ${MAX_BATCH} (got ${flushAt})`);
    }
    this.options = {
      baseUrl: options.baseUrl.replace(/\/+$/, ""),
      flushAt,
      flushIntervalMs: options.flushIntervalMs ?? DEFAULTS.flushIntervalMs,
      maxQueueSize: options.maxQueueSize ?? DEFAULTS.maxQueueSize,
      maxInFlight: Math.max(1, options.maxInFlight ?? DEFAULTS.maxInFlight),
      maxAttempts: Math.max(1, options.maxAttempts ?? DEFAULTS.maxAttempts),
      initialBackoffMs: options.initialBackoffMs ?? DEFAULTS.initialBackoffMs,
      maxBackoffMs: options.maxBackoffMs ?? DEFAULTS.maxBackoffMs,
      requestTimeoutMs: options.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs,
    };
    this.appToken = options.appToken;
    this.cronSecret = options.cronSecret;
    this.onResult = options.onResult;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // --- events ----------------------------------------------------------------------------

  /**
   * Queue one event; it is sent within `flushIntervalMs`, or at once when `flushAt` are queued.
   * Returns false (and reports it `dropped`) when the queue is full or the client is closing.
   */
  track(event: TrackEvent): boolean {
    const sent = toSent(event);
    this.stats.tracked += 1;
    if (this.closing || this.queue.length >= this.options.maxQueueSize) {
      this.report({ event: sent, status: "dropped", reason: this.closing ? "closed" : "queue_full", attempts: 0 });
      return false;
    }
    this.queue.push({ seq: this.nextSeq++, event: sent });
    this.stats.queued = this.queue.length;
    if (this.queue.length >= this.options.flushAt) {
      this.pump();
    } else if (this.timer === null) {
      this.timer = setTimeout(() => this.onTimer(), this.options.flushIntervalMs);
    }
    return true;
  }

  /** Send everything queued now; resolves when each of those events has its result. */
  async flush(): Promise<void> {
    const through = this.nextSeq - 1;
    if (through < 0) return;
    this.forcedThrough = Math.max(this.forcedThrough, through);
    const settled = new Promise<void>((resolve) => this.waiters.push({ through, resolve }));
    this.pump();
    this.settleWaiters();
    await settled;
  }

  /**
   * Stop accepting events and deliver what is queued within the deadline. Whatever is still
   * undelivered then (queued, waiting for a retry, or in flight) is reported `failed`.
   */
  async close(options: CloseOptions = {}): Promise<ClientStats> {
    this.closing = true;
    this.clearTimer();
    const deadlineMs = options.deadlineMs ?? 10_000;
    let timeout: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<void>((resolve) => {
      timeout = setTimeout(resolve, deadlineMs);
    });
    await Promise.race([this.flush(), expired]);
    clearTimeout(timeout);
    this.stopped = true;
    for (const cancel of this.onStop) cancel();
    this.onStop.clear();
    const abandoned = this.queue.splice(0);
    this.stats.queued = 0;
    for (const item of abandoned) {
      this.report({ event: item.event, status: "failed", error: new IngestClosedError(), attempts: 0 });
    }
    await Promise.all([...this.inFlight].map((batch) => batch.done));
    this.settleWaiters();
    return this.stats;
  }

  private onTimer(): void {
    this.timer = null;
    this.forcedThrough = Math.max(this.forcedThrough, this.nextSeq - 1);
    this.pump();
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Start batches while slots are free: full ones, and partial ones up to `forcedThrough`. */
  private pump(): void {
    const { flushAt, maxInFlight } = this.options;
    while (this.inFlight.size < maxInFlight && this.queue.length > 0 && !this.stopped) {
      const head = this.queue[0] as Queued;
      if (this.queue.length < flushAt && head.seq > this.forcedThrough) break;
      const items = this.queue.splice(0, flushAt);
      this.stats.queued = this.queue.length;
      const batch: Batch = { firstSeq: head.seq, done: Promise.resolve() };
      batch.done = this.deliver(items.map((item) => item.event)).finally(() => {
        this.inFlight.delete(batch);
        this.stats.inFlightBatches = this.inFlight.size;
        this.settleWaiters();
        this.pump();
      });
      this.inFlight.add(batch);
      this.stats.inFlightBatches = this.inFlight.size;
      this.stats.batches += 1;
    }
    if (this.queue.length > 0 && this.timer === null && !this.closing) {
      this.timer = setTimeout(() => this.onTimer(), this.options.flushIntervalMs);
    }
  }

  private settleWaiters(): void {
    let lowest = this.queue[0]?.seq ?? Number.POSITIVE_INFINITY;
    for (const batch of this.inFlight) lowest = Math.min(lowest, batch.firstSeq);
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const waiter = this.waiters[i] as { through: number; resolve: () => void };
      if (waiter.through < lowest || this.stopped) {
        this.waiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }

  /** One batch, split in halves while its body is over the service's limit. */
  private async deliver(events: SentEvent[]): Promise<void> {
    const body = JSON.stringify({ events });
    // A UTF-16 unit is at most 3 UTF-8 bytes: most batches need no encoding to be measured.
    if (events.length > 1 && body.length * 3 > MAX_BODY_BYTES && encoder.encode(body).length > MAX_BODY_BYTES) {
      const half = Math.ceil(events.length / 2);
      await this.deliver(events.slice(0, half));
      await this.deliver(events.slice(half));
      return;
    }
    const outcome = await this.request<EventIngestReport>("POST", "/ingest/events", {
      body,
      credential: "app",
      accept: [202],
    });
    if (outcome.ok) {
      this.reportBatch(events, outcome.value, outcome.attempts);
    } else {
      for (const event of events) {
        this.report({ event, status: "failed", error: outcome.error, attempts: outcome.attempts });
      }
    }
  }

  private reportBatch(events: SentEvent[], answer: EventIngestReport, attempts: number): void {
    const reasons = new Map(answer.rejected.map((r) => [r.index, r.reason]));
    const rest: EventStatus =
      answer.duplicates === 0 ? "accepted" : answer.accepted === 0 ? "duplicate" : "accepted_or_duplicate";
    events.forEach((event, index) => {
      const reason = reasons.get(index);
      if (reason === undefined) this.report({ event, status: rest, attempts });
      else this.report({ event, status: "rejected", reason, attempts });
    });
  }

  private report(result: EventResult): void {
    const key = result.status === "accepted_or_duplicate" ? "acceptedOrDuplicate" : result.status;
    this.stats[key] += 1;
    if (this.onResult === undefined) return;
    try {
      this.onResult(result);
    } catch {
      // a caller's callback must not break delivery of the other events
    }
  }

  // --- the other endpoints ---------------------------------------------------------------

  /** `GET /health`: the answer for 200 and 503 alike (not retried). */
  async health(): Promise<Health> {
    const outcome = await this.request<Health>("GET", "/health", { accept: [200, 503], attempts: 1 });
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  /** `POST /ingest/crawl`: import a partner source's items (retried: the import is idempotent). */
  async importCrawl(batch: CrawlBatch): Promise<CrawlReport> {
    return this.call<CrawlReport>("POST", "/ingest/crawl", { body: JSON.stringify(batch), credential: "app", accept: [200] });
  }

  /** `POST /cron/rollup`: queue the rollup (202), or a dry run's report with `dryRun: true` (200). */
  async triggerRollup(request: RollupRequest = {}): Promise<JobQueued | RollupDryRun> {
    return this.call<JobQueued | RollupDryRun>("POST", "/cron/rollup", {
      body: JSON.stringify(request),
      credential: "cron",
      accept: [200, 202],
    });
  }

  /** `POST /cron/rebuild-search`: queue a rebuild of the search index. */
  async rebuildSearch(): Promise<JobQueued> {
    return this.call<JobQueued>("POST", "/cron/rebuild-search", { credential: "cron", accept: [202] });
  }

  /** `GET /internal/search`: rules matching `q`, best first. */
  async search(params: SearchParams): Promise<SearchResults> {
    const query = new URLSearchParams({ q: params.q });
    if (params.limit !== undefined && params.limit !== null) query.set("limit", String(params.limit));
    return this.call<SearchResults>("GET", `/internal/search?${query}`, { credential: "app", accept: [200] });
  }

  private async call<T>(method: string, path: string, init: RequestInit_): Promise<T> {
    const outcome = await this.request<T>(method, path, init);
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  // --- one request, with retries ---------------------------------------------------------

  private async request<T>(method: string, path: string, init: RequestInit_): Promise<Outcome<T>> {
    const attempts = init.attempts ?? this.options.maxAttempts;
    for (let attempt = 1; ; attempt++) {
      if (this.stopped) return { ok: false, error: new IngestClosedError(), attempts: attempt - 1 };
      const answer = await this.once<T>(method, path, init);
      if (answer.ok) return { ...answer, attempts: attempt };
      const error = answer.error;
      if (!error.retriable || attempt >= attempts) return { ok: false, error, attempts: attempt };
      if (!(await this.sleep(this.delayMs(error, attempt)))) {
        return { ok: false, error: new IngestClosedError(), attempts: attempt };
      }
      this.countRetry(error);
    }
  }

  private async once<T>(method: string, path: string, init: RequestInit_): Promise<Answer<T>> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (init.body !== undefined) headers["content-type"] = "application/json";
    const secret = init.credential === "app" ? this.appToken : init.credential === "cron" ? this.cronSecret : undefined;
    if (init.credential === "app" && secret !== undefined) headers["x-app-token"] = secret;
    if (init.credential === "cron" && secret !== undefined) headers["x-cron-secret"] = secret;
    const timeout = new AbortController();
    const onStop = (): void => timeout.abort();
    this.onStop.add(onStop);
    const timer = setTimeout(() => timeout.abort(), this.options.requestTimeoutMs);
    this.stats.requests += 1;
    try {
      const response = await this.fetchImpl(this.options.baseUrl + path, {
        method,
        headers,
        body: init.body ?? null,
        signal: timeout.signal,
      });
      const text = await response.text();
      if (init.accept.includes(response.status)) return { ok: true, value: JSON.parse(text) as T };
      return { ok: false, error: httpError(response, text) };
    } catch (cause) {
      if (this.stopped) return { ok: false, error: new IngestClosedError() };
      const message = timeout.signal.aborted
        ? `no answer within ${this.options.requestTimeoutMs} ms`
        : `request failed: ${describe(cause)}`;
      return { ok: false, error: new IngestNetworkError(message, { cause }) };
    } finally {
      clearTimeout(timer);
      this.onStop.delete(onStop);
    }
  }

  /** `Retry-After` when the service gave one, else exponential backoff with full jitter. */
  private delayMs(error: IngestError, attempt: number): number {
    if (error instanceof IngestHttpError && error.retryAfterS !== null) return error.retryAfterS * 1000;
    const ceiling = Math.min(this.options.maxBackoffMs, this.options.initialBackoffMs * 2 ** (attempt - 1));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  /** Wait `ms`; false when `close()` gave up first. */
  private sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        resolve(false);
      };
      const timer = setTimeout(() => {
        this.onStop.delete(wake);
        resolve(true);
      }, ms);
      this.onStop.add(wake);
    });
  }

  private countRetry(error: IngestError): void {
    const cause = error instanceof IngestHttpError ? String(error.status) : "network";
    this.stats.retries[cause] = (this.stats.retries[cause] ?? 0) + 1;
  }
}

interface RequestInit_ {
  body?: string;
  credential?: "app" | "cron";
  accept: number[];
  attempts?: number;
}

type Answer<T> = { ok: true; value: T } | { ok: false; error: IngestError };
type Outcome<T> = ({ ok: true; value: T } | { ok: false; error: IngestError }) & { attempts: number };

/** The event as sent, built field by field (this runs for every event: no spread, no delete). */
function toSent(event: TrackEvent): SentEvent {
  const sent: SentEvent = {
    type: event.type,
    ruleId: event.ruleId,
    idempotencyKey: event.idempotencyKey ?? crypto.randomUUID(),
  };
  if (event.userId != null) sent.userId = event.userId;
  if (event.ts != null) sent.ts = event.ts instanceof Date ? event.ts.toISOString() : event.ts;
  if (event.ip != null) sent.ip = event.ip;
  return sent;
}

function httpError(response: Response, text: string): IngestHttpError {
  let code = "http_error";
  let message = response.statusText || "error";
  let details: unknown[] = [];
  try {
    const body = JSON.parse(text) as Schemas["ErrorBody"];
    ({ code, message } = body.error);
    details = body.error.details ?? [];
  } catch {
    // not the service's error model (a proxy's page, say): keep the status line
  }
  const retryAfter = Number.parseInt(response.headers.get("retry-after") ?? "", 10);
  return new IngestHttpError({
    status: response.status,
    code,
    message,
    details,
    requestId: response.headers.get("x-request-id"),
    retryAfterS: isRetriableStatus(response.status) && Number.isFinite(retryAfter) ? Math.max(0, retryAfter) : null,
  });
}

function describe(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = (cause as { cause?: unknown }).cause;
    return inner instanceof Error ? `${cause.message} (${inner.message})` : cause.message;
  }
  return String(cause);
}
