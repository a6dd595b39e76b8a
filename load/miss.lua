-- Every request asks for a (width, quality) pair never asked before, so every one is a miss
-- that runs fetch + decode + upscale + resize + encode + store. 54,000 distinct pairs.
local counter = 0
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end
function request()
  local n = tid * 27000 + counter
  counter = counter + 1
  local w = 300 + n % 900
  local q = 40 + math.floor(n / 900) % 60
  return wrk.format("GET", "/x2/model=lanczos/w=" .. w .. "/q=" .. q .. "/format=webp/shop/cat.png")
end
