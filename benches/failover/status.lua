-- wrk script for benches/failover/run.sh.
--
-- Counts responses by status class and code, and responses per wall-clock second
-- (all, and failed ones), in every thread; when wrk ends, sums the threads and
-- prints one "failover KEY VALUE..." line per figure, after wrk's own summary.
-- Socket errors (connect, read, write, timeout) come from wrk's summary: they have
-- no status and no time.

local threads = {}

-- FAILOVER_PACE_MS: each connection waits this long before each request, so the
-- load is steady and well below what the machine can do; 0 sends at full speed.
local pace = tonumber(os.getenv("FAILOVER_PACE_MS") or "0") or 0
if pace > 0 then
    function delay()
        return pace
    end
end

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    classes = { 0, 0, 0, 0, 0 } -- 1xx .. 5xx
    codes = {}                  -- status >= 400 -> count
    all_at = {}                 -- epoch second -> responses
    bad_at = {}                 -- epoch second -> responses with status >= 400
end

function response(status, headers, body)
    local class = math.floor(status / 100)
    if class >= 1 and class <= 5 then
        classes[class] = classes[class] + 1
    end
    local now = os.time()
    all_at[now] = (all_at[now] or 0) + 1
    if status >= 400 then
        codes[status] = (codes[status] or 0) + 1
        bad_at[now] = (bad_at[now] or 0) + 1
    end
end

local function add(into, from)
    for k, v in pairs(from) do
        into[k] = (into[k] or 0) + v
    end
end

function done(summary, latency, requests)
    local classes, codes, all_at, bad_at = { 0, 0, 0, 0, 0 }, {}, {}, {}
    for _, thread in ipairs(threads) do
        local c = thread:get("classes")
        for i = 1, 5 do classes[i] = classes[i] + (c[i] or 0) end
        add(codes, thread:get("codes"))
        add(all_at, thread:get("all_at"))
        add(bad_at, thread:get("bad_at"))
    end
    local e = summary.errors
    io.write(string.format("failover requests %d\n", summary.requests))
    for i = 1, 5 do
        io.write(string.format("failover class %dxx %d\n", i, classes[i]))
    end
    for code, n in pairs(codes) do
        io.write(string.format("failover code %d %d\n", code, n))
    end
    io.write(string.format("failover errors connect %d read %d write %d status %d timeout %d\n",
        e.connect, e.read, e.write, e.status, e.timeout))
    -- Only the maximum: wrk adds synthetic samples to its latency histogram for
    -- responses slower than the mean interval (coordinated-omission correction),
    -- so its percentiles do not count real responses in a stall.
    io.write(string.format("failover latency_max_us %d\n", latency.max))
    for second, n in pairs(all_at) do
        io.write(string.format("failover second %d %d %d\n", second, n, bad_at[second] or 0))
    end
end
