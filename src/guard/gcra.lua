-- GCRA in one atomic step, on the Redis server's clock (one clock for every replica).
-- KEYS[1]: the client's bucket. ARGV[1]: emission interval, ARGV[2]: burst tolerance
-- (interval * (burst - 1)), both in microseconds.
-- Returns 0 when a token was taken, else the microseconds until one is there.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait > 0 then return math.ceil(wait) end
local new_tat = tat + interval
-- The key lives as long as the bucket is not full again: an idle client costs nothing.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return 0
