-- Release a concurrency slot and wake one process waiting for a slot.
-- KEYS: slots key, wake list key.  ARGV: lease id, wake list ttl (ms).
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 63)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return removed
