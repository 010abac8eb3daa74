-- wrk script for bench/ingest_bench.py: POST Data Cortex bundles, each one unique.
--
--   wrk -t1 -c8 -d10s -s bench/ingest.lua http://127.0.0.1:PORT -- API_KEY SIZE RUN_ID [ORG]
--
-- Every request carries a bundle of SIZE events for a device_tag of its own
-- ("<RUN_ID>-<thread>-<counter>") and every event an event_index of its own
-- (counter * 1000 + position), so Cortex's dedupe never sees a duplicate, within a run or
-- across runs with different RUN_IDs.  The events mix the spec's types: "event" with the
-- whole taxonomy and float1, "economy" with spend_amount/spend_currency, "dau", "install".
--
-- The body is assembled from pre-built pieces (only the counter changes per request), so
-- wrk spends little CPU on it even at 100 events per bundle.  done() prints one line,
-- "WRK_JSON {...}", that ingest_bench.py parses: request counts by answer, wrk's error
-- counters and latency percentiles (microseconds).

local threads = {}
local next_thread_id = 1

function setup(thread)
   thread:set("thread_id", next_thread_id)
   next_thread_id = next_thread_id + 1
   table.insert(threads, thread)
end

-- per thread state --------------------------------------------------------------------
local counter = 0
local templates = {}     -- templates[k] = {pieces = {...}, slots = {...}}
local path_base = "/demo/1/track"
local path = nil
local path_second = -1
local headers = { ["Content-Type"] = "text/plain" }
ok = 0                   -- answers 200 (globals: done() reads them with thread:get)
bad = 0                  -- any other answer
statuses = {}            -- status -> count, for the answers that were not 200

-- one event per type; "#IDX#" is replaced by the counter and "#TAIL#" by the position
local EVENT_KINDS = {
   event = '{"type":"event","kingdom":"progress","phylum":"level","class":"complete",'
      .. '"order":"world_3","family":"stage_12","genus":"boss","species":"three_stars",'
      .. '"float1":%s,"online_status":"online-wifi","event_index":#IDX##TAIL#,'
      .. '"event_datetime":"%s"}',
   economy = '{"type":"economy","kingdom":"store","phylum":"gems","class":"bundle",'
      .. '"order":"starter","spend_amount":%s,"spend_currency":"USD","spend_type":"iap",'
      .. '"event_index":#IDX##TAIL#,"event_datetime":"%s"}',
   dau = '{"type":"dau","online_status":"online-cellular","event_index":#IDX##TAIL#,'
      .. '"event_datetime":"%s"}',
   install = '{"type":"install","kingdom":"organic","phylum":"app_store",'
      .. '"event_index":#IDX##TAIL#,"event_datetime":"%s"}',
}
-- the mix, cycled through: 6 event, 2 economy, 1 dau, 1 install in every 10 events
local MIX = { "event", "economy", "event", "dau", "event", "event", "economy", "event", "install", "event" }

local function iso(t)
   return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

-- Split text at every "#IDX#" into pieces; the slots between pieces get the counter.
local function add_text(pieces, slots, text)
   local start = 1
   while true do
      local a, b = string.find(text, "#IDX#", start, true)
      if not a then
         pieces[#pieces] = pieces[#pieces] .. string.sub(text, start)
         return
      end
      pieces[#pieces] = pieces[#pieces] .. string.sub(text, start, a - 1)
      table.insert(pieces, false)          -- a slot for the counter
      table.insert(slots, #pieces)
      table.insert(pieces, "")
      start = b + 1
   end
end

-- A bundle template of `size` events starting at position `offset` of the mix.
local function build_template(api_key, run_id, size, offset, now)
   local pieces, slots = { "" }, {}
   add_text(pieces, slots, string.format(
      '{"api_key":"%s","app_ver":"2.7.1","device_tag":"%s-%d-#IDX#","os":"ios",'
      .. '"os_ver":"17.4.1","device_type":"iphone","language":"en","events":[',
      api_key, run_id, thread_id))
   for i = 0, size - 1 do
      local kind = MIX[(offset + i) % #MIX + 1]
      -- events spread over the last minutes, oldest first, as an SDK flushes them
      local when = iso(now - (size - i) * 3)
      local text
      if kind == "event" then
         text = string.format(EVENT_KINDS.event, string.format("%.2f", 1 + (i * 7 % 50) / 4), when)
      elseif kind == "economy" then
         text = string.format(EVENT_KINDS.economy, ({ "0.99", "4.99", "19.99" })[i % 3 + 1], when)
      else
         text = string.format(EVENT_KINDS[kind], when)
      end
      -- event_index = counter * 1000 + i, written as the counter's digits then 3 digits
      text = string.gsub(text, "#TAIL#", string.format("%03d", i))
      if i > 0 then
         add_text(pieces, slots, ",")
      end
      add_text(pieces, slots, text)
   end
   add_text(pieces, slots, "]}")
   return { pieces = pieces, slots = slots }
end

function init(args)
   local api_key, size, run_id = args[1], tonumber(args[2]), args[3]
   if args[4] then
      path_base = "/" .. args[4] .. "/1/track"
   end
   local now = os.time()
   for offset = 0, #MIX - 1 do
      templates[offset] = build_template(api_key, run_id, size, offset, now)
   end
   templates.size = size
end

function request()
   counter = counter + 1
   local second = os.time()
   if second ~= path_second then   -- current_time: the send time, rebuilt once a second
      path_second = second
      path = path_base .. "?current_time=" .. iso(second)
   end
   local template = templates[(counter * templates.size) % #MIX]
   local pieces = template.pieces
   local digits = tostring(counter)
   for _, slot in ipairs(template.slots) do
      pieces[slot] = digits
   end
   return wrk.format("POST", path, headers, table.concat(pieces))
end

function response(status, response_headers, body)
   if status == 200 then
      ok = ok + 1
   else
      bad = bad + 1
      statuses[status] = (statuses[status] or 0) + 1
   end
end

function done(summary, latency, requests)
   local total_ok, total_bad, codes = 0, 0, {}
   for _, thread in ipairs(threads) do
      total_ok = total_ok + thread:get("ok")
      total_bad = total_bad + thread:get("bad")
      for status, count in pairs(thread:get("statuses")) do
         codes[status] = (codes[status] or 0) + count
      end
   end
   local status_parts = {}
   for status, count in pairs(codes) do
      table.insert(status_parts, string.format('"%d":%d', status, count))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"ok":%d,"bad":%d,'
      .. '"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes, total_ok, total_bad,
      table.concat(status_parts, ","), e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
