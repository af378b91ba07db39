-- wrk script for the burst: the events of events.lua, each thread stopping after its share.
-- Arguments: keep|close, then the number of requests per thread.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "events.lua")

local base_init = init
local limit = 0
local answered = 0

function init(args)
  base_init(args)
  limit = tonumber(args[2]) or 0
end

function response(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered >= limit then
    wrk.thread:stop()
  end
end
