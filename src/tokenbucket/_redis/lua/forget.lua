-- Forget what a limiter was granted: delete the keys of its meters and its pause (a
-- reset). Reservations already made keep their instants; giving one back, or settling
-- it for less, then finds nothing to give (its entry, or its bucket's latest, is gone).
--
-- KEYS: ...
-- ARGV: count
--   ...        the keys to delete (all under one hash tag)
--   count      the number of keys
-- Returns how many of them existed.
local count = tonumber(ARGV[1])
return redis.call('DEL', unpack(KEYS, 1, count))
