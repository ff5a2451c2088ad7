-- Give back a reservation whose caller left before its instant (cancelled or timed out).
--
-- KEYS: ..., slots_key
-- ARGV: now, t, meters
-- ARGV per meter (meters): kind, key, p1, p2, amount, member
-- ARGV then: lease
--   ...        the meters' keys (by the key fields)
--   slots_key  the key of the leases held (only with a lease)
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   t          the reservation's instant
--   meters     the number of meters
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   amount     what the reservation took
--   member     the reservation's id
--   lease      the lease id ('' for none: then there is no slots key)
-- A window entry is removed (that can only lower every window's sum). A bucket's
-- reservation is given back only while it is the latest one on that bucket, so no
-- one reserved after it counted on it. Returns the number of meters given back.
local t = tonumber(ARGV[2])
local meters = tonumber(ARGV[3])
local pos = 4
local given = 0
for _ = 1, meters do
  local kind, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
  local p1, amount, member = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 4]), ARGV[pos + 5]
  local span = tonumber(ARGV[pos + 3])
  pos = pos + 6
  if amount > 0 then
    if kind == 'b' then
      local tat = tonumber(redis.call('GET', key) or '0') or 0
      if redis.call('GET', key .. ':last') == member then
        local back = math.max(tat - amount / p1, t)
        if back > now then
          redis.call('SET', key, string.format('%.17g', back), 'KEEPTTL')
        else
          redis.call('DEL', key)
        end
        given = given + 1
      end
    else
      local entry = member .. ':' .. string.format('%.17g', amount)
      local score = tonumber(redis.call('ZSCORE', key, entry))
      if score then
        local st = log_open(key, now, span)
        if redis.call('ZREM', key, entry) == 1 then
          log_change(st, score, -amount)
          given = given + 1
        end
        log_save(key, st)
      end
    end
  end
end
local lease = ARGV[pos]
if lease ~= '' and KEYS[#KEYS] then
  redis.call('ZREM', KEYS[#KEYS], lease)
end
return given
