-- wrk script of the benchmark: GET <path>, with the X-API-Key header taken in turn from the lines of
-- a file ("-" sends no key, "Name: value" sends that header instead), and one machine-readable
-- summary line at the end.
--
--   wrk -t2 -c32 -d5s -s wrk-rotate.lua http://127.0.0.1:8080 -- /protected keys.txt
--
-- Every scenario, the open route included, runs through this script, so the load generator does the
-- same work per request in each of them. A file's lines may repeat: the Zipf scenario's file holds
-- 200,000 keys drawn by popularity, the same key many times over. The file is read and every request
-- formatted in init, before wrk starts its clock.

local requests, count, position = {}, 0, 0

function init(args)
  local path, file = args[1], args[2]
  for line in io.lines(file) do
    local headers = {}
    local name, value = line:match("^([%w-]+): (.*)$")
    if name then
      headers[name] = value
    elseif line ~= "-" then
      headers["X-API-Key"] = line
    end
    count = count + 1
    requests[count] = wrk.format("GET", path, headers)
  end
  -- Threads start at different places in the list.
  position = math.random(count) - 1
end

function request()
  position = position % count + 1
  return requests[position]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d non2xx=%d socket_errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
