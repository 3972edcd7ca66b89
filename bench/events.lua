-- wrk script: POST /ingest/events with batches shaped like the main API's.
-- Mostly VIEWs from many client IPs, some events with idempotency keys, a few repeated keys.
-- Environment: BENCH_TOKEN, BENCH_RULES (count of seeded rules), BENCH_BATCH (events per request),
-- BENCH_RUN (makes idempotency keys unique across runs).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

local token = os.getenv("BENCH_TOKEN")
local rules = tonumber(os.getenv("BENCH_RULES") or "10000")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local types = {"COPY", "SAVE", "FORK", "VOTE"}
local counter = 0
-- `thread_id` is a global set per thread by setup() (a local here would shadow it and give
-- every thread the same stream); `run` makes idempotency keys unique across runs.
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(os.time() + thread_id * 7919)
end

local function event(i)
   counter = counter + 1
   -- skewed rule popularity: squaring a uniform number favours low ids
   local r = math.floor((math.random() ^ 2) * rules) + 1
   local ip = string.format("10.%d.%d.%d", math.random(0, 3), math.random(0, 255), math.random(1, 254))
   local kind = "VIEW"
   if math.random() < 0.2 then kind = types[math.random(1, 4)] end
   local key = ""
   local roll = math.random()
   if roll < 0.10 then
      key = string.format(',"idempotencyKey":"%s-t%d-%d"', run, thread_id, counter)
   elseif roll < 0.12 then
      -- a redelivery of an earlier key from this thread
      key = string.format(',"idempotencyKey":"%s-t%d-%d"', run, thread_id, math.max(1, counter - math.random(1, 500)))
   end
   return string.format('{"type":"%s","ruleId":"rul_%d","ip":"%s"%s}', kind, r, ip, key)
end

function request()
   local parts = {}
   for i = 1, batch do parts[i] = event(i) end
   local body = '{"events":[' .. table.concat(parts, ",") .. ']}'
   return wrk.format("POST", "/ingest/events",
      {["x-app-token"] = token, ["content-type"] = "application/json"}, body)
end
