-- A meter's parameters now (prepended to the scripts that take them from a process that
-- may not have seen the latest update): a process sends the parameters of the version
-- of the limiter's rates hash it knows (see update.lua); when another process's update
-- has changed them since, the hash's are used instead.

local function current(rates_key, version, key, p1, p2)
  if (redis.call('HGET', rates_key, 'v') or '') == version then return p1, p2 end
  local held = redis.call('HGET', rates_key, key)
  if not held then return p1, p2 end
  local a, b = string.match(held, '(%S+) (%S+)')
  return tonumber(a), tonumber(b)
end
