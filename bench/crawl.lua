-- wrk script: POST /ingest/crawl with batches of new items from one registered source.
-- Environment: BENCH_TOKEN, BENCH_SOURCE (source id), BENCH_BATCH (items per request),
-- BENCH_RUN (makes external ids unique across runs).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

local token = os.getenv("BENCH_TOKEN")
local source = os.getenv("BENCH_SOURCE")
local batch = tonumber(os.getenv("BENCH_BATCH") or "200")
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local models = {"gpt-5", "claude-4", "gemini-3", "llama-4"}
local counter = 0
local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

local function item()
   counter = counter + 1
   local id = string.format("%s-t%d-%d", run, thread_id, counter)
   return string.format(
      '{"externalId":"%s","url":"https://partner.example/rules/%s","title":"Imported rule %s",'
      .. '"summary":"A rule a partner crawler found; it keeps prompts short and answers precise.",'
      .. '"tags":["tag%d","imported"],"model":"%s","raw":{"stars":%d,"lang":"en"}}',
      id, id, id, counter % 20, models[counter % 4 + 1], counter % 500)
end

function request()
   local parts = {}
   for i = 1, batch do parts[i] = item() end
   local body = string.format('{"sourceId":"%s","items":[%s]}', source, table.concat(parts, ","))
   return wrk.format("POST", "/ingest/crawl",
      {["x-app-token"] = token, ["content-type"] = "application/json"}, body)
end
