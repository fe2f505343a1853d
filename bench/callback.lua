-- wrk script for bench/run and bench/ab: POSTs callbacks to /css/callback.
--
-- What it sends is a cycle of BENCH_STREAMS (default 64) prepared requests, one
-- per stream id ("bench-stream-N"), so that records spread over the topic's
-- partitions by key as real traffic does. Each request is a copy of one body of
-- the mix:
--
--   BENCH_MIX="PATH=WEIGHT=RECORDS ..."   bodies, how often each comes in every
--                                         WEIGHT-sum requests, and the records
--                                         it yields (bench/run counts them)
--   BENCH_BODY=PATH                       one body (the default: the seed
--                                         sample), when BENCH_MIX is unset
--
-- Request N of the cycle is the body whose weight bucket holds N modulo the sum
-- of the weights, so the mix is spread evenly, not in runs. Preparing the
-- requests up front keeps the per-request cost of the load generator to
-- returning a string.
--
-- At the end, one machine-readable line:
--   BENCH_RESULT requests=N duration_us=N non2xx=N connect=N read=N write=N timeout=N p50_us=N p99_us=N records=N max_records=N
-- records: the records of every request sent (answered or still in flight when
-- wrk stopped); max_records: the most one request of the mix yields.

local streams = tonumber(os.getenv("BENCH_STREAMS") or "64")

-- The mix: { path, weight, records } per body.
local mix = {}
local spec = os.getenv("BENCH_MIX")
if spec and spec ~= "" then
  for item in spec:gmatch("%S+") do
    local path, weight, records = item:match("^(.+)=(%d+)=(%d+)$")
    assert(path, "BENCH_MIX items are PATH=WEIGHT=RECORDS: " .. item)
    mix[#mix + 1] = { path = path, weight = tonumber(weight), records = tonumber(records) }
  end
else
  mix[1] = { path = os.getenv("BENCH_BODY") or "tests/fixtures/seed-sample.json", weight = 1, records = 0 }
end

local pattern = '"stream_id"%s*:%s*"[^"]*"'
-- With BENCH_SIGN and BENCH_SIGN_T, every body carries that CSS signature.
local sign, sign_t = os.getenv("BENCH_SIGN"), os.getenv("BENCH_SIGN_T")
local total_weight, max_records = 0, 0
for _, body in ipairs(mix) do
  local file = assert(io.open(body.path, "rb"))
  body.text = file:read("*a")
  file:close()
  assert(body.text:find(pattern), body.path .. " has no stream_id")
  if sign and sign ~= "" then
    body.text = body.text:gsub("^%s*{", string.format('{"t":%s,"sign":"%s",', sign_t, sign), 1)
  end
  total_weight = total_weight + body.weight
  max_records = math.max(max_records, body.records)
end

-- The body of the mix for request n (1-based) of the cycle.
local function body_for(n)
  local slot = (n - 1) % total_weight
  for _, body in ipairs(mix) do
    if slot < body.weight then
      return body
    end
    slot = slot - body.weight
  end
end

local requests, records_of = {}, {}
for i = 1, streams do
  local body = body_for(i)
  local text = body.text:gsub(pattern, string.format('"stream_id":"bench-stream-%d"', i), 1)
  requests[i] = wrk.format("POST", "/css/callback", { ["Content-Type"] = "application/json" }, text)
  records_of[i] = body.records
end

local next_index = 0
-- Records of the requests this thread sent (read by done() through the thread).
records_sent = 0

-- Threads start at different offsets so they do not send the same stream in step.
local threads = {}
function setup(thread)
  thread:set("thread_id", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  next_index = ((thread_id or 0) * 17) % streams
end

function request()
  next_index = next_index % streams + 1
  records_sent = records_sent + records_of[next_index]
  return requests[next_index]
end

function done(summary, latency, _)
  local records = 0
  for _, thread in ipairs(threads) do
    records = records + (thread:get("records_sent") or 0)
  end
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d records=%d max_records=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), records, max_records))
end
