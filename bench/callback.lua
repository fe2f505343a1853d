-- wrk script for bench/run: POSTs the seed sample callback to /css/callback.
--
-- The bodies are prepared once per thread: BENCH_STREAMS (default 64) copies of
-- BENCH_BODY (default tests/fixtures/seed-sample.json), each with its own
-- stream_id ("bench-stream-N"), cycled request by request, so records spread over
-- the topic's partitions by key as real traffic does. Preparing them up front
-- keeps the per-request cost of the load generator to returning a string.
--
-- At the end, one machine-readable line for bench/run:
--   BENCH_RESULT requests=N duration_us=N non2xx=N connect=N read=N write=N timeout=N p50_us=N p99_us=N

local path = os.getenv("BENCH_BODY") or "tests/fixtures/seed-sample.json"
local streams = tonumber(os.getenv("BENCH_STREAMS") or "64")

local file = assert(io.open(path, "rb"))
local seed = file:read("*a")
file:close()

local pattern = '"stream_id"%s*:%s*"[^"]*"'
assert(seed:find(pattern), "the body has no stream_id")

-- With BENCH_SIGN and BENCH_SIGN_T, every body carries that CSS signature.
local sign, sign_t = os.getenv("BENCH_SIGN"), os.getenv("BENCH_SIGN_T")
if sign and sign ~= "" then
  seed = seed:gsub("^%s*{", string.format('{"t":%s,"sign":"%s",', sign_t, sign), 1)
end

local requests = {}
for i = 1, streams do
  local body = seed:gsub(pattern, string.format('"stream_id":"bench-stream-%d"', i), 1)
  requests[i] = wrk.format("POST", "/css/callback", { ["Content-Type"] = "application/json" }, body)
end

local next_index = 0

-- Threads start at different offsets so they do not send the same stream in step.
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  next_index = ((thread_id or 0) * 17) % streams
end

function request()
  next_index = next_index % streams + 1
  return requests[next_index]
end

function done(summary, latency, _)
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
