-- Change a limiter's rates and concurrency cap for every process (Limiter.update).
--
-- The new parameters go into the limiter's rates hash, and its version (the field 'v')
-- becomes this call's id: a reserve call that sends another version takes nothing and is
-- told to read the hash first (reserve.lua, status 4), so no process grants at the old
-- rates after the change; settling, reports and charge-backs sent with another version
-- use the hash's parameters (rates.lua). A meter's field is its key, its value
-- 'p1 p2 amount' (amount: the rate's amount per period, as configured); the cap's field
-- names the cap the limiter was made with, so that processes made with another cap keep
-- theirs.
-- A window keeps its log: what is in it counts against the new limit, and what a
-- server's report held back (feedback.lua) holds a raise back too, until the last of it
-- leaves the window. A bucket keeps what it has on hand, down to its new capacity, and
-- refills at its new rate from now on (its theoretical arrival time is recomputed); it
-- forgets its latest reservation, so a reservation made at the old rate is never given
-- back at the new one. A cap's raise wakes as many processes waiting for a slot.
--
-- KEYS: rates_key, ...
-- ARGV: now, slack, version, cap_field, cap, was, wake, wake_ttl, meters
-- ARGV per meter (meters): kind, key, p1, p2, new_p1, new_p2, amount
--   rates_key  the limiter's rates hash (no expiry: a process started later reads it)
--   ...        the keys that the wake and key fields name
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   slack      ms that keys outlive what they hold
--   version    this call's id, unique to it: the hash's version from now on
--   cap_field  the cap's field ('': the cap is not changed)
--   cap        the new cap
--   was        the cap before, unless the hash holds a later one
--   wake       index in KEYS of the list that processes waiting for a slot block on
--              (0: none)
--   wake_ttl   ms the wake list lasts
--   meters     the number of meters changed
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit; before the change, unless the
--              hash holds later ones
--   p2         bucket: capacity          window: window (s); likewise
--   new_p1     p1 from now on
--   new_p2     p2 from now on
--   amount     the new rate's amount per period
-- Returns what the rates hash holds now (as HGETALL does).
local slack = tonumber(ARGV[2])
local version = ARGV[3]
local cap_field, cap = ARGV[4], tonumber(ARGV[5])
local was = tonumber(ARGV[6])
local wake = tonumber(ARGV[7])
local wake_ttl = tonumber(ARGV[8])
local meters = tonumber(ARGV[9])
local pos = 10
local rates_key = KEYS[1]
for _ = 1, meters do
  local kind, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
  local p1, p2 = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  local new_p1, new_p2 = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
  local amount = ARGV[pos + 6]
  pos = pos + 7
  p1, p2 = rates_held(rates_key, key, p1, p2)
  if kind == 'b' then
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    local level = p2
    if tat > now then level = p2 - (tat - now) * p1 end
    if level > new_p2 then level = new_p2 end
    local at = now + (new_p2 - level) / new_p1
    if at > now then
      redis.call('SET', key, log_num(at), 'PX', math.ceil((at - now) * 1000) + slack)
    else
      redis.call('DEL', key)
    end
    redis.call('DEL', key .. ':last')
  else
    local last = tonumber(redis.call('GET', key .. ':held') or '')
    if new_p1 > p1 and last and last > now - p2 then
      -- As much as the raise, held back with the last of what a report held back.
      local st = log_open(key, now, p2)
      local more = new_p1 - p1
      redis.call('ZADD', key, last, 'fu' .. version .. ':' .. log_num(more))
      log_change(st, last, more)
      log_save(key, st)
    end
  end
  redis.call('HSET', rates_key, key, log_num(new_p1) .. ' ' .. log_num(new_p2) .. ' ' .. amount)
end
if cap_field ~= '' then
  was = tonumber(redis.call('HGET', rates_key, cap_field) or was)
  redis.call('HSET', rates_key, cap_field, cap)
  if wake > 0 and cap > was then
    local found = redis.call('TYPE', KEYS[wake])['ok']
    if found == 'list' or found == 'none' then
      for _ = 1, math.min(cap - was, 64) do redis.call('LPUSH', KEYS[wake], '1') end
      redis.call('LTRIM', KEYS[wake], 0, 63)
      redis.call('PEXPIRE', KEYS[wake], wake_ttl)
    end
  end
end
redis.call('HSET', rates_key, 'v', version)
return redis.call('HGETALL', rates_key)
