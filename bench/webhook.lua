-- wrk script: POST /ingest/stripe/webhook with deliveries signed beforehand by bench/webhooks.py.
-- BENCH_DELIVERIES names a file of "<stripe-signature>\t<body>" lines; thread i of n sends lines
-- i, i+n, i+2n, ... and starts over (as redeliveries) when it runs out.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

local threads = {}
local deliveries = {}
local next_index = 1

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local n = tonumber(os.getenv("BENCH_THREADS") or "2")
   local i = 0
   for line in io.lines(os.getenv("BENCH_DELIVERIES")) do
      if i % n == thread_id - 1 then
         local tab = string.find(line, "\t", 1, true)
         table.insert(deliveries, {string.sub(line, 1, tab - 1), string.sub(line, tab + 1)})
      end
      i = i + 1
   end
end

function request()
   local d = deliveries[next_index]
   next_index = next_index % #deliveries + 1
   return wrk.format("POST", "/ingest/stripe/webhook",
      {["stripe-signature"] = d[1], ["content-type"] = "application/json"}, d[2])
end
