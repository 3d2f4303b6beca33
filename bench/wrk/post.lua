-- wrk script: POST one AdmissionReview body over a kept-alive connection.
-- BENCH_BODY: file with the body; BENCH_PATH: the endpoint path.
-- BENCH_MIX: instead, a comma-separated list of path=file pairs, sent in turn (for the soak).
-- done() prints one line "WRKJSON {...}" with requests, errors and latency percentiles (µs).

local function slurp(name)
  local f = assert(io.open(name, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local mix = os.getenv("BENCH_MIX")
local requests_mix = nil

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

if mix and mix ~= "" then
  requests_mix = {}
  for pair in string.gmatch(mix, "[^,]+") do
    local path, file = string.match(pair, "([^=]+)=(.+)")
    table.insert(requests_mix, wrk.format("POST", path, nil, slurp(file)))
  end
  local i = 0
  request = function()
    i = i % #requests_mix + 1
    return requests_mix[i]
  end
else
  wrk.path = os.getenv("BENCH_PATH")
  wrk.body = slurp(os.getenv("BENCH_BODY"))
end

done = function(summary, latency, requests)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                  e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}',
                  latency.min, latency.mean, latency.max, latency:percentile(50),
                  latency:percentile(90), latency:percentile(99), latency:percentile(99.9)),
  }
  io.write("WRKJSON {" .. table.concat(parts, ",") .. "}\n")
end
