-- 80% of requests go to 50 warm URLs with zipf(1.0) popularity, 20% to URLs never seen.
local warm = 50
local weights, total = {}, 0
for i = 1, warm do total = total + 1 / i; weights[i] = total end
local counter = 0
function setup(thread)
  thread:set("tid", math.random(1, 1000000))
end
local function zipf()
  local r = math.random() * total
  for i = 1, warm do if r <= weights[i] then return i end end
  return warm
end
function request()
  counter = counter + 1
  if math.random() < 0.8 then
    return wrk.format("GET", "/x2/model=lanczos/w=" .. (199 + zipf()) .. "/format=webp/shop/cat.png")
  end
  local w = 300 + (tid * 7919 + counter) % 1500
  return wrk.format("GET", "/x2/model=lanczos/w=" .. w .. "/q=" .. (counter % 50 + 41) .. "/format=webp/shop/cat.png")
end
