-- wrk script for scripts/bench.sh. Each request names one of 1,000 tenants
-- in `x-tenant` (so the rate limit filter asks about 1,000 counters); the
-- requests are formatted once, in init, so wrk spends no time building
-- them. done() prints one JSON line in tollgate-load's `--json` shape.
local tenants = 1000
local requests = {}
local i = 0

function init(args)
  for t = 0, tenants - 1 do
    requests[t + 1] = wrk.format(nil, nil, { ["x-tenant"] = "t" .. t })
  end
  i = math.random(tenants) - 1
end

function request()
  i = i % tenants + 1
  return requests[i]
end

function done(summary, latency, _)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  -- status: answers >= 400 (a 429 or a 500 from a failing tollgate).
  local bad = e.connect + e.read + e.write + e.timeout + e.status
  local function ms(p) return latency:percentile(p) / 1000 end
  io.write(string.format(
    '{"requests_per_second":%.1f,"requests":%d,"seconds":%.3f,"ok":%d,"denied":0,' ..
    '"errors":%d,"sent_total":%d,"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,' ..
    '"p999":%.3f,"max":%.3f}}\n',
    summary.requests / seconds, summary.requests, seconds, summary.requests - bad,
    bad, summary.requests, ms(50), ms(90), ms(99), ms(99.9), latency.max / 1000))
end
