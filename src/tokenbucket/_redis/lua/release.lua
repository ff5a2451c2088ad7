-- Release a concurrency slot and wake one process waiting for a slot.
--
-- KEYS: slots_key, wake_key
-- ARGV: lease, wake_ttl
--   slots_key  the key of the leases held
--   wake_key   the key of the list that waiting processes block on
--   lease      the lease id
--   wake_ttl   ms the wake list lasts
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 63)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return removed
