-- The clock (prepended to the scripts whose ARGV[1] is `now`).
--
-- `now` is the instant the script runs at, in seconds since the epoch: the Redis
-- server's TIME when ARGV[1] is '' (one clock for every host), else ARGV[1] (the
-- client's clock, for services that refuse TIME in scripts). `later` adds a step to an
-- instant without ever rounding early.

local now
if ARGV[1] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
else
  now = tonumber(ARGV[1])
end


local function later(base, step)
  -- base + step, rounded up: epoch seconds in a double are ~2e-7 apart, and a schedule
  -- that rounds to nearest on every grant would drift early.
  local sum = base + step
  if sum - base < step then
    local m, e = math.frexp(sum)
    sum = sum + 2 ^ (e - 53)
  end
  return sum
end
