-- Fold a server's view into the meters: pause, and lower what a meter may grant.
--
-- KEYS: pause_key, rates_key, ...
-- ARGV: now, slack, version, pause, meters
-- ARGV per meter (meters): kind, key, p1, p2, remaining, reset, refill
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   slack      ms that keys outlive what they hold
--   pause_key  the limiter's pause key
--   rates_key  the limiter's rates hash (see rates.lua)
--   version    the version of the rates hash the parameters come from
--   ...        the meters' keys (by the key fields)
--   pause      seconds to pause (-1: none)
--   meters     the number of meters
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   remaining  what the server says is left
--   reset      seconds until the server's reset
--   refill     units/s at which the server's capacity comes back (0: all at the reset);
--              what a window holds back leaves it as soon as that much has come back
local slack = tonumber(ARGV[2])
local version = ARGV[3]
local pause = tonumber(ARGV[4])
if pause >= 0 then
  local until_ = now + pause
  local current = tonumber(redis.call('GET', KEYS[1]) or '0')
  if until_ > current then
    redis.call('SET', KEYS[1], string.format('%.17g', until_), 'PX', math.ceil(pause * 1000) + slack)
  end
end
local meters = tonumber(ARGV[5])
local pos = 6
for _ = 1, meters do
  local kind, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
  local p1, p2 = current(KEYS[2], version, key, tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]))
  local remaining, reset = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
  local refill = tonumber(ARGV[pos + 6])
  pos = pos + 7
  if kind == 'b' then
    local tat = tonumber(redis.call('GET', key) or '0')
    local floor = now + (p2 - remaining) / p1
    if floor > tat then
      redis.call('SET', key, string.format('%.17g', floor), 'PX', math.ceil((floor - now) * 1000) + slack)
      -- The server's count covers every reservation so far: none is given back.
      redis.call('DEL', key .. ':last')
    end
  else
    -- After log_open, every entry left is inside the window that ends now (or later).
    local st = log_open(key, now, p2)
    local excess = p1 - st.all - remaining
    if excess > 0 then
      -- The server's count covers every reservation so far: none is given back (adjust.lua
      -- and give.lua leave entries reserved at or before the mark alone).
      redis.call('SET', key .. ':mark', string.format('%.17g', now), 'PX', math.ceil(p2 * 1000) + slack)
      if reset > p2 then reset = p2 end
      -- Held back until the reset; or, when the server's capacity comes back at
      -- `refill`, in equal parts of about 1/64 of the limit (at most 64 of them), each
      -- until that much has come back.
      local parts = 1
      if refill > 0 then parts = math.min(64, math.ceil(excess * 64 / p1)) end
      local part = excess / parts
      local stamp = 'fb' .. string.format('%.17g', now) .. '#'
      local last = now
      for k = 1, parts do
        local hold = reset
        if refill > 0 and k * part / refill < hold then hold = k * part / refill end
        local at = now + hold - p2
        last = at
        redis.call('ZADD', key, at, stamp .. k .. ':' .. string.format('%.17g', part))  -- '<id>:<amount>'
        log_change(st, at, part)
      end
      -- The latest instant of what is held back, for a raise to hold back with it
      -- (update.lua).
      local held = tonumber(redis.call('GET', key .. ':held') or '')
      if not held or last > held then
        redis.call('SET', key .. ':held', log_num(last), 'PX', math.ceil(p2 * 1000) + slack)
      end
      -- (Never shorter than it was: entries reserved for later keep it alive.)
      local ttl = math.ceil(p2 * 1000) + slack
      if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
    end
    log_save(key, st)
  end
end
return 1
