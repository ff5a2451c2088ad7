-- Give back a reservation whose caller left before its instant (cancelled or timed out).
--
-- KEYS: the meters' keys, then the slots key (or none).
-- ARGV: now ('' = TIME), the reservation instant t, meter count, then per meter:
--   kind, key index, p1, p2, amount, member; then the lease id ('' for none).
-- A window entry is removed (that can only lower every window's sum). A bucket's
-- reservation is given back only while it is the latest one on that bucket, so no
-- one reserved after it counted on it. Returns the number of meters given back.
local now
if ARGV[1] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
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
