-- Give back reservations whose callers left before their instant (cancelled or timed out),
-- and wake as many processes waiting for a slot as leases were removed.
--
-- KEYS: ...
-- ARGV: now, wake_ttl, count
-- ARGV per reservation (count): t, meters, slots, wake, lease
-- ARGV per meter (meters): kind, key, p1, p2, amount, member
--   ...        the keys that the slots, wake and key fields name (all under one hash tag)
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   wake_ttl   ms a wake list lasts
--   count      the number of reservations
--   t          the reservation's instant
--   meters     the number of the reservation's meters
--   slots      index in KEYS of the key of the leases held (0: no lease)
--   wake       index in KEYS of the list that processes waiting for a slot block on (0: none)
--   lease      the lease id ('' for none)
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   amount     what the reservation took
--   member     the reservation's id
-- Each meter is given back as give.lua says; giving the same reservation back twice
-- gives it once (a retried call whose reply was lost gives nothing back again). A wake
-- list holding something else (another program's value) is left alone, as in
-- release.lua. Returns the number of meters given back.
local wake_ttl = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local pos = 4
local given = 0
local woken = {}  -- index of a wake list -> the leases removed on its slots key
for _ = 1, count do
  local t, meters = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  local slots, wake, lease = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), ARGV[pos + 4]
  pos = pos + 5
  for _ = 1, meters do
    local kind, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
    local p1, span = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
    local amount, member = tonumber(ARGV[pos + 4]), ARGV[pos + 5]
    pos = pos + 6
    given = given + give_back(kind, key, p1, span, amount, member, t)
  end
  if slots > 0 and redis.call('ZREM', KEYS[slots], lease) == 1 and wake > 0 then
    woken[wake] = (woken[wake] or 0) + 1
  end
end
for index, removed in pairs(woken) do
  local found = redis.call('TYPE', KEYS[index])['ok']
  if found == 'list' or found == 'none' then
    for _ = 1, math.min(removed, 64) do
      redis.call('LPUSH', KEYS[index], '1')
    end
    redis.call('LTRIM', KEYS[index], 0, 63)
    redis.call('PEXPIRE', KEYS[index], wake_ttl)
  end
end
return given
