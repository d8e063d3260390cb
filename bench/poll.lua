-- wrk script of the `polled` scenario (bench/run.py): dashboards polling a running batch.
-- Usage: wrk -t2 -c200 -d10h --latency -s bench/poll.lua http://127.0.0.1:PORT -- \
--            BATCH_ID [INTERVAL_MS [CONNECTIONS_PER_THREAD]]
--
-- Every connection asks, in turn, GET /batches/{id} and GET /stages/llm1/status, one request
-- every INTERVAL_MS (default 38.5) like a dashboard that polls at an interval, instead of
-- asking again the moment an answer arrives: the 200 connections offer 200 / 0.0385 s =
-- 5,195 requests/s. CONNECTIONS_PER_THREAD (default 100, i.e. -c200 over -t2) must match the
-- command line: wrk does not tell the script.
--
-- wrk's delay() hook is asked, after each answer, how long the connection waits before its
-- next request. Each thread hands out send times INTERVAL_MS / CONNECTIONS_PER_THREAD apart
-- (the connections take them in turn), so the offered rate holds whatever the latency, as long
-- as an answer comes within an interval; slower answers lower the rate to what the
-- connections can do. Without LuaJIT's ffi (for a clock) each connection waits INTERVAL_MS
-- after each answer instead, which offers a little less (latency adds to each interval).

local paths = {}
local n = 0
local interval_ms = 38.5
local per_thread = 100
local spacing_ms = interval_ms / per_thread
local next_ms = nil -- the next free send time of this thread
local now_ms = nil  -- the monotonic clock in ms, when ffi is there

local function number_arg(value, what, min)
    local v = tonumber(value)
    if v == nil or v < min then
        error(what .. " must be a number >= " .. min .. ", not " .. tostring(value))
    end
    return v
end

local ok, ffi = pcall(require, "ffi")
if ok then
    ffi.cdef [[
        typedef struct { long tv_sec; long tv_nsec; } cofi_poll_timespec;
        int clock_gettime(int clock_id, cofi_poll_timespec *ts);
    ]]
    local ts = ffi.new("cofi_poll_timespec")
    local CLOCK_MONOTONIC = 1
    now_ms = function()
        ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
        return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    end
end

function init(args)
    local id = args[1] or "1"
    paths[1] = wrk.format("GET", "/batches/" .. id)
    paths[2] = wrk.format("GET", "/stages/llm1/status")
    if args[2] ~= nil then
        interval_ms = number_arg(args[2], "INTERVAL_MS", 0)
    end
    if args[3] ~= nil then
        per_thread = number_arg(args[3], "CONNECTIONS_PER_THREAD", 1)
    end
    spacing_ms = interval_ms / per_thread
end

function delay()
    if now_ms == nil then
        return math.floor(interval_ms)
    end
    local now = now_ms()
    if next_ms == nil or next_ms < now then
        next_ms = now
    end
    local wait = next_ms - now
    next_ms = next_ms + spacing_ms
    return math.floor(wait)
end

function request()
    n = n + 1
    return paths[(n % 2) + 1]
end
