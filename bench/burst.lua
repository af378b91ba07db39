-- wrk script for the burst: the events of events.lua, each thread stopping after its share.
-- Arguments: keep|close, the number of requests per thread, and a file to create when done
-- (wrk itself runs for its whole duration even once its threads stopped: the caller watches
-- for the file, then interrupts wrk, which prints its report).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "events.lua")

local base_init = init
local limit = 0
local answered = 0
local marker = nil

function init(args)
  base_init(args)
  limit = tonumber(args[2]) or 0
  marker = args[3]
end

function response(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered == limit then
    if marker then
      local f = io.open(marker, "w")
      if f then f:write(tostring(answered)) f:close() end
    end
    wrk.thread:stop()
  end
end
