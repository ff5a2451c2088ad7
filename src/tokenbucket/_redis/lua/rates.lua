-- A meter's parameters now (prepended to the scripts that take them from a process that
-- may not have seen the latest update): a process sends the parameters of the version
-- of the limiter's rates hash it knows (see update.lua); when another process's update
-- has changed them since, the hash's are used instead.

-- The parameters the rates hash holds for the meter `key`, else `p1` and `p2`.
local function rates_held(rates_key, key, p1, p2)
  local held = redis.call('HGET', rates_key, key)
  if not held then return p1, p2 end
  local a, b = string.match(held, '(%S+) (%S+)')
  return tonumber(a), tonumber(b)
end

-- Whether the version the caller sent is not the hash's: read once per call.
local rates_stale = nil

local function current(rates_key, version, key, p1, p2)
  if rates_stale == nil then
    rates_stale = (redis.call('HGET', rates_key, 'v') or '') ~= version
  end
  if not rates_stale then return p1, p2 end
  return rates_held(rates_key, key, p1, p2)
end
