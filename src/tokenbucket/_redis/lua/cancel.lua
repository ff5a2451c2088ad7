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
-- Each meter is given back as give.lua says; giving the same reservation back twice
-- gives it once. Returns the number of meters given back.
local t = tonumber(ARGV[2])
local meters = tonumber(ARGV[3])
local pos = 4
local given = 0
for _ = 1, meters do
  local kind, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
  local p1, span = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  local amount, member = tonumber(ARGV[pos + 4]), ARGV[pos + 5]
  pos = pos + 6
  given = given + give_back(kind, key, p1, span, amount, member, t)
end
local lease = ARGV[pos]
if lease ~= '' and KEYS[#KEYS] then
  redis.call('ZREM', KEYS[#KEYS], lease)
end
return given
