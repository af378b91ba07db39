-- wrk script: every request is a distinct Copernica open event (~470 bytes, form-urlencoded),
-- so that deduplication downstream cannot hide work. Threads number their events apart.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tonumber(tid) or 0
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["X-Copernica-ID"] = "account-1234"
  if args[1] == "close" then
    wrk.headers["Connection"] = "close"
  end
end

local agent = "Mozilla%2F5.0+%28Windows+NT+10.0%3B+Win64%3B+x64%29+AppleWebKit%2F537.36+%28KHTML%2C+like+Gecko%29+Chrome%2F120.0+Safari%2F537.36"

function request()
  counter = counter + 1
  local n = thread_id * 100000000 + counter
  local t = 1795694401 + (n % 86400)
  local body = string.format(
    "id=m%015d&type=open&timestamp=2026-11-26+12%%3A00%%3A01&time=%d&recipient=user%d%%40example.com" ..
    "&ip=192.0.2.%d&useragent=%s&referer=https%%3A%%2F%%2Fmail.example.com%%2Finbox%%3Ffolder%%3Dnews" ..
    "&tags=newsletter%%3Bweekly%%3Bnovember&profile=%d&mailing=4242&database=12&extra=%s",
    n, t, n % 1000000, (n % 250) + 1, agent, n % 1000000, string.rep("x", 60))
  return wrk.format("POST", "/copernica", nil, body)
end
