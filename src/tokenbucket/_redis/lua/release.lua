-- Release concurrency slots of one limiter and wake as many processes waiting for one.
--
-- KEYS: slots_key, wake_key
-- ARGV: wake_ttl, count
-- ARGV per lease (count): lease
--   slots_key  the key of the leases held
--   wake_key   the key of the list that waiting processes block on
--   wake_ttl   ms the wake list lasts
--   count      the number of leases
--   lease      a lease id
-- Returns the number of leases removed. A wake key holding something else (another
-- program's value) is left alone: waiters then find the slots when they ask again.
local count = tonumber(ARGV[2])
local pos = 3
local removed = 0
for _ = 1, count do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[pos])
  pos = pos + 1
end
local found = redis.call('TYPE', KEYS[2])['ok']
if found == 'list' or found == 'none' then
  for _ = 1, math.min(count, 64) do
    redis.call('LPUSH', KEYS[2], '1')
  end
  redis.call('LTRIM', KEYS[2], 0, 63)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
end
return removed
