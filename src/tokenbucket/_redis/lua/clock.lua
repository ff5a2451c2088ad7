-- The clock (prepended to the scripts whose ARGV[1] is `now`).
--
-- `now` is the instant the script runs at, in seconds since the epoch: the Redis
-- server's TIME when ARGV[1] is '' (one clock for every host), else ARGV[1] (the
-- client's clock, for services that refuse TIME in scripts).

local now
if ARGV[1] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
else
  now = tonumber(ARGV[1])
end

