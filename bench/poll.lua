-- wrk script of the `polled` scenario (bench/run.py): every connection asks, in turn,
-- GET /batches/{id} and GET /stages/llm1/status, like dashboards polling a running batch.
-- Usage: wrk -t2 -c200 -d10h --latency -s bench/poll.lua http://127.0.0.1:PORT -- BATCH_ID

local paths = {}
local n = 0

function init(args)
    local id = args[1] or "1"
    paths[1] = wrk.format("GET", "/batches/" .. id)
    paths[2] = wrk.format("GET", "/stages/llm1/status")
end

function request()
    n = n + 1
    return paths[(n % 2) + 1]
end
