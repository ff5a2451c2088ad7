-- Charge what a local stand-in admitted while Redis was out of reach, so that the
-- limit holds across Redis's return.
--
-- A bucket is charged what the stand-in owes now (its burst less its level: what the
-- process consumed beyond what it earned back), as a reservation made now would charge
-- it. A window gets an entry for every grant still inside it, at the grant's instant
-- (`age` seconds before now). The call is recorded under call_key for record_ttl ms:
-- sent again (a retry after its reply was lost), it charges nothing again.
--
-- KEYS: call_key, rates_key, ...
-- ARGV: now, slack, record_ttl, call, version, meters, grants
-- ARGV per meter (meters): kind, key, p1, p2, owed
-- ARGV per grant (grants): age, amounts
--   call_key   the record of this call (under the hash tag of its keys)
--   rates_key  the limiter's rates hash (see rates.lua)
--   ...        the meters' keys (by the key fields)
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   slack      ms that keys outlive what they hold
--   record_ttl  ms the call's record lasts
--   call       the call's id: grant g's window entries are '<call>.<g>'
--   version    the version of the rates hash the parameters come from
--   meters     the number of meters
--   grants     the number of grants
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   owed       bucket: what the stand-in owes it now (0 for a window)
--   age        seconds from the grant to now
--   amounts    what the grant took of each meter, space-separated
-- Returns 1, or 0 for a call seen before.

local slack = tonumber(ARGV[2])
local record_ttl = tonumber(ARGV[3])
local call = ARGV[4]
local version = ARGV[5]
local meters = tonumber(ARGV[6])
local grants = tonumber(ARGV[7])
local pos = 8

if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', record_ttl) then return 0 end

local specs = {}
for m = 1, meters do
  local key = KEYS[tonumber(ARGV[pos + 1])]
  local p1, p2 = current(KEYS[2], version, key, tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]))
  specs[m] = {kind = ARGV[pos], key = key, p1 = p1, p2 = p2, owed = tonumber(ARGV[pos + 4])}
  pos = pos + 5
end

local logs, ttls = {}, {}
for g = 1, grants do
  local t = now - tonumber(ARGV[pos])
  local m = 0
  for amount in string.gmatch(ARGV[pos + 1], '%S+') do
    m = m + 1
    amount = tonumber(amount)
    local s = specs[m]
    if s.kind == 'w' and amount > 0 and t + s.p2 > now then
      local st = logs[m]
      if not st then
        st = log_open(s.key, now, s.p2)
        logs[m] = st
      end
      redis.call('ZADD', s.key, t, call .. '.' .. g .. ':' .. log_num(amount))
      log_change(st, t, amount)
      ttls[m] = math.max(ttls[m] or 0, math.ceil((t + s.p2 - now) * 1000) + slack)
    end
  end
  pos = pos + 2
end

for m = 1, meters do
  local s = specs[m]
  if s.kind == 'b' and s.owed > 0 then
    local tat = tonumber(redis.call('GET', s.key) or '0') or 0
    if now > tat then tat = now end
    tat = later(tat, s.owed / s.p1)
    local ttl = math.ceil((tat - now) * 1000) + slack
    redis.call('SET', s.key, log_num(tat), 'PX', ttl)
    redis.call('SET', s.key .. ':last', call, 'PX', ttl)
  elseif logs[m] then
    if redis.call('PTTL', s.key) < ttls[m] then redis.call('PEXPIRE', s.key, ttls[m]) end
    log_save(s.key, logs[m])
  end
end
return 1
