-- wrk script for bench/run: POST a Messages body and print a one-line JSON summary.
--
-- Environment (read by every wrk thread):
--   BENCH_BODY_FILE  file holding the request body (JSON)
--   BENCH_KEY        value of the x-api-key header
--   BENCH_LABEL      free text copied into the summary line
--   BENCH_HEADER     optional extra header "name: value" (e.g. x-mock-event-interval-ms: 2,
--                    which the mock obeys and both proxies pass through)
--
-- The summary line starts with "BENCHJSON " so bench/run can find it in wrk's output.
-- Latencies are in microseconds (wrk's unit); "status" counts non-2xx/3xx replies.

local function slurp(path)
  local f = assert(io.open(path, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.path = "/v1/messages"
wrk.body = slurp(os.getenv("BENCH_BODY_FILE"))
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY") or ""
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCHJSON {"label":"%s","requests":%d,"duration_s":%.3f,"rps":%.1f,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d,"non2xx":%d}\n',
    os.getenv("BENCH_LABEL") or "", summary.requests, secs, summary.requests / secs,
    summary.bytes, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.timeout, e.status))
end
