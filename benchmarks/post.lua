-- wrk script for chatkit-broker benchmarks.
--
--   wrk -t2 -c128 -d10s -s post.lua http://127.0.0.1:PORT/api/chatkit/session -- TOKENS_FILE [BODY]
--
-- Every request is a POST with a JSON body and `Authorization: Bearer <jwt>`; the tokens
-- (one per line in TOKENS_FILE) are rotated, each thread starting at a different offset.
-- All requests are pre-formatted in init(), so request() is a table lookup.
-- Any status other than 200 is counted (per status code); done() prints one line
-- "BENCH_JSON {...}" with the summary that benchmarks/wrk.py parses.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
non200 = 0
statuses = {}
sample = nil

function init(args)
  local path = args[1]
  local body = args[2] or '{"workflow":"bench"}'
  local tokens = {}
  if path and path ~= "" then
    for line in io.lines(path) do
      if #line > 0 then
        tokens[#tokens + 1] = line
      end
    end
  end
  if #tokens == 0 then
    tokens[1] = ""
  end
  for k, tok in ipairs(tokens) do
    local headers = { ["Content-Type"] = "application/json" }
    if tok ~= "" then
      headers["Authorization"] = "Bearer " .. tok
    end
    reqs[k] = wrk.format("POST", nil, headers, body)
  end
  n = #reqs
  i = ((thread_id or 0) * 97) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if sample == nil then
      sample = string.sub(body or "", 1, 300)
    end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local total_non200 = 0
  local merged = {}
  local first_sample = nil
  for _, t in ipairs(threads) do
    total_non200 = total_non200 + (t:get("non200") or 0)
    local st = t:get("statuses") or {}
    for k, v in pairs(st) do
      merged[k] = (merged[k] or 0) + v
    end
    if first_sample == nil then
      first_sample = t:get("sample")
    end
  end
  local parts = {}
  for k, v in pairs(merged) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  local dur = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.6f,"rps":%.3f,"bytes":%d,'
      .. '"latency_ms":{"mean":%.3f,"stdev":%.3f,"max":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f},'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"status_errors":%d,"non200":%d,"statuses":{%s},"sample":%s}\n',
    summary.requests, dur, summary.requests / dur, summary.bytes,
    latency.mean / 1000, latency.stdev / 1000, latency.max / 1000,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    e.connect, e.read, e.write, e.timeout,
    e.status, total_non200, table.concat(parts, ","),
    first_sample and json_string(first_sample) or "null"))
end
