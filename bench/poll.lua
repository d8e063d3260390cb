-- wrk script of the `polled` scenario (bench/run.py): dashboards polling a running batch.
-- Every connection asks, in turn, GET /batches/{id} and GET /stages/llm1/status, and waits
-- DELAY_MS (default 38.5) after each answer before its next request: a dashboard polls at an
-- interval, it does not ask again the moment an answer arrives. 200 connections thus offer
-- about 200 / 0.0385 s = 5,200 requests/s (a little less: the answer's own latency adds to
-- each interval). wrk's delay() takes whole milliseconds, so a fractional DELAY_MS is met on
-- average by drawing floor(DELAY_MS) or the next millisecond.
-- Usage: wrk -t2 -c200 -d10h --latency -s bench/poll.lua http://127.0.0.1:PORT -- BATCH_ID [DELAY_MS]

local paths = {}
local n = 0
local delay_ms = 38.5

function init(args)
    local id = args[1] or "1"
    paths[1] = wrk.format("GET", "/batches/" .. id)
    paths[2] = wrk.format("GET", "/stages/llm1/status")
    if args[2] ~= nil then
        delay_ms = tonumber(args[2])
        if delay_ms == nil or delay_ms < 0 then
            error("DELAY_MS must be a number of milliseconds >= 0, not " .. args[2])
        end
    end
end

function delay()
    local whole = math.floor(delay_ms)
    if math.random() < delay_ms - whole then
        return whole + 1
    end
    return whole
end

function request()
    n = n + 1
    return paths[(n % 2) + 1]
end
