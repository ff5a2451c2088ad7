-- Settle a grant: charge an overrun or give back an unused part, per meter.
--
-- A call is recorded under call_key for record_ttl ms: the same call sent again (a retry
-- after its reply was lost on the way back) finds its record and changes nothing again.
--
-- KEYS: call_key, rates_key, ...
-- ARGV: now, slack, record_ttl, version, meters
-- ARGV per meter (meters): kind, key, p1, p2, amount, member, new, t
--   call_key   the record of this call (its id, under the hash tag of its keys)
--   rates_key  the limiter's rates hash (see rates.lua)
--   ...        the meters' keys (by the key fields)
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   slack      ms that keys outlive what they hold
--   record_ttl  ms a call's record lasts
--   version    the version of the rates hash the parameters come from
--   meters     the number of meters
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   amount     what the grant reserved
--   member     the grant's id
--   new        what the grant takes instead
--   t          the grant's instant
-- Returns 1, or 0 for a call found in its record (nothing changed).
-- A window entry keeps its instant and takes the new amount (a smaller one lowers every
-- window's sum; a larger one is debt later callers wait off). A bucket is charged an
-- overrun (its schedule moves later); an unused part goes back only while the grant is
-- the latest on that bucket. Neither gets an unused part back once a server's report has
-- lowered it since the grant (feedback.lua): the server's count covers the grant.
local slack = tonumber(ARGV[2])
local record_ttl = tonumber(ARGV[3])
local version = ARGV[4]
local meters = tonumber(ARGV[5])
local pos = 6
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', record_ttl) == false then return 0 end
for _ = 1, meters do
  local kind, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
  local p1, p2 = current(KEYS[2], version, key, tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]))
  local old, member = tonumber(ARGV[pos + 4]), ARGV[pos + 5]
  local new, t = tonumber(ARGV[pos + 6]), tonumber(ARGV[pos + 7])
  pos = pos + 8
  local diff = new - old
  if diff ~= 0 then
    if kind == 'b' then
      local tat = tonumber(redis.call('GET', key) or '0') or 0
      if diff > 0 then
        if now > tat then tat = now end
        tat = tat + diff / p1
        redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + slack)
      elseif redis.call('GET', key .. ':last') == member then
        do
          local back = math.max(tat + diff / p1, t)
          if back > now then
            redis.call('SET', key, string.format('%.17g', back), 'KEEPTTL')
          else
            redis.call('DEL', key)
          end
        end
      end
    elseif diff > 0 or t > (tonumber(redis.call('GET', key .. ':mark') or '') or -math.huge) then
      -- (An unused part goes back unless a server's report lowered the window since the
      -- grant: its count covers it; see feedback.lua.)
      local st = log_open(key, now, p2)
      local removed = 0
      if old > 0 then
        local entry = member .. ':' .. string.format('%.17g', old)
        local score = tonumber(redis.call('ZSCORE', key, entry))
        if score then
          removed = redis.call('ZREM', key, entry)
          log_change(st, score, -old)
        end
      end
      local at = t
      if removed == 0 and old > 0 then at = nil end  -- the grant already left the window
      if diff > 0 and at == nil then at = now end
      if at ~= nil and new > 0 then
        local amount = new
        if removed == 0 then amount = diff end
        redis.call('ZADD', key, at, member .. 's:' .. string.format('%.17g', amount))
        redis.call('PEXPIRE', key, math.ceil((math.max(at, now) + p2 - now) * 1000) + slack)
        log_change(st, at, amount)
      end
      log_save(key, st)
    end
  end
end
return 1
