-- wrk script: POST /ingest/events with batches shaped like the main API's.
-- Mostly VIEWs from many client IPs, some events with idempotency keys, a few repeated keys.
-- Environment: BENCH_TOKEN, BENCH_RULES (count of seeded rules), BENCH_BATCH (events per request),
-- BENCH_RUN (makes idempotency keys unique across runs), BENCH_RANDOM_KEYS=1 (keys shaped like the
-- clients' random UUIDs, which land anywhere in the key index, instead of run-thread-counter).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

local token = os.getenv("BENCH_TOKEN")
local rules = tonumber(os.getenv("BENCH_RULES") or "10000")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local types = {"COPY", "SAVE", "FORK", "VOTE"}
local counter = 0
-- `thread_id` is a global set per thread by setup() (a local here would shadow it and give
-- every thread the same stream); `run` makes idempotency keys unique across runs.
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local random_keys = os.getenv("BENCH_RANDOM_KEYS") == "1"
local recent = {}  -- with random keys: the last 500 keys sent, for redeliveries
local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(os.time() + thread_id * 7919)
end

local function uuid()
   return string.format("%08x-%04x-4%03x-%04x-%06x%06x", math.random(0, 0xffffffff),
      math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff),
      math.random(0, 0xffffff), math.random(0, 0xffffff))
end

local function new_key()
   if not random_keys then return string.format("%s-t%d-%d", run, thread_id, counter) end
   local key = uuid()
   recent[counter % 500] = key
   return key
end

local function old_key()
   if not random_keys then
      return string.format("%s-t%d-%d", run, thread_id, math.max(1, counter - math.random(1, 500)))
   end
   return recent[math.random(0, 499)] or new_key()
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
      key = string.format(',"idempotencyKey":"%s"', new_key())
   elseif roll < 0.12 then
      -- a redelivery of an earlier key from this thread
      key = string.format(',"idempotencyKey":"%s"', old_key())
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
