/** Errors of the ingest client. Every failure the client reports is one of these. */

/** Base class: `retriable` says whether the client would try the request again. */
export class IngestError extends Error {
  readonly retriable: boolean;

  constructor(message: string, retriable: boolean, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.retriable = retriable;
  }
}

/** The service answered with an error status (its JSON error model, when it sent one). */
export class IngestHttpError extends IngestError {
  readonly status: number;
  /** The service's stable error code (`validation_failed`, `rate_limited`, ...). */
  readonly code: string;
  readonly details: unknown[];
  readonly requestId: string | null;
  /** Seconds the service asked to wait (429 and 503), when it said. */
  readonly retryAfterS: number | null;

  constructor(init: {
    status: number;
    code: string;
    message: string;
    details?: unknown[];
    requestId?: string | null;
    retryAfterS?: number | null;
  }) {
    super(`${init.status} ${init.code}: ${init.message}`, isRetriableStatus(init.status));
    this.status = init.status;
    this.code = init.code;
    this.details = init.details ?? [];
    this.requestId = init.requestId ?? null;
    this.retryAfterS = init.retryAfterS ?? null;
  }
}

/** No answer: connection refused or reset, DNS, or no answer within `requestTimeoutMs`. */
export class IngestNetworkError extends IngestError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, true, options);
  }
}

/** `close()` reached its deadline before the request could be delivered. */
export class IngestClosedError extends IngestError {
  constructor(message = "the client was closed before the events could be delivered") {
    super(message, false);
  }
}

/** Statuses worth another attempt: rate limited, database unavailable, a proxy's 5xx. */
export function isRetriableStatus(status: number): boolean {
  return status === 429 || status === 500 || status === 502 || status === 503 || status === 504;
}
