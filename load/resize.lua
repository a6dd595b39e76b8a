-- A resize miss per request: every request names a source file never asked for before (the
-- folder holds hard links of one 2048x1536 JPEG), so neither side can answer from a cache.
-- From the environment: PREFIX (the URL up to the file name), START and SPAN (this run's block
-- of file numbers; each wrk thread takes its own half). load/ipx.sh checks no run wraps.
local counter = 0
local next_tid = 0
local prefix = os.getenv("PREFIX")
local start = tonumber(os.getenv("START"))
local half = math.floor(tonumber(os.getenv("SPAN")) / 2)
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end
function request()
  local n = start + tid * half + counter % half
  counter = counter + 1
  return wrk.format("GET", prefix .. string.format("p-%06d.jpg", n))
end
