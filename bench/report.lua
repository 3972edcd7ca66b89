-- Shared by the wrk scripts (loaded with dofile): the one line bench/harness.py reads.
function done(summary, latency, requests)
   io.write(string.format("BENCH_JSON {\"requests\":%d,\"errors_status\":%d,\"errors_connect\":%d,\"errors_timeout\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"duration_s\":%.3f}\n",
      summary.requests, summary.errors.status, summary.errors.connect, summary.errors.timeout,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
