-- Overload: every request a new (width, quality) pair (a miss, like miss.lua), from more
-- connections than the server admits to its inference queue. Counts statuses and whether each
-- 503 carried Retry-After; done() prints the tally.
local counter = 0
local threads = {}
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end
function init(args)
  ok, overloaded, retry_after, other = 0, 0, 0, 0
end
function request()
  local n = tid * 27000 + counter
  counter = counter + 1
  local w = 300 + n % 900
  local q = 40 + math.floor(n / 900) % 60
  return wrk.format("GET", "/x2/model=lanczos/w=" .. w .. "/q=" .. q .. "/format=webp/shop/cat.png")
end
function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 503 then
    overloaded = overloaded + 1
    if headers["Retry-After"] or headers["retry-after"] then retry_after = retry_after + 1 end
  else
    other = other + 1
  end
end
function done(summary, latency, requests)
  local t = { ok = 0, overloaded = 0, retry_after = 0, other = 0 }
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format("statuses: 200=%d 503=%d (with Retry-After: %d) other=%d\n",
    t.ok, t.overloaded, t.retry_after, t.other))
end
