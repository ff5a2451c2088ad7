-- Forget what a limiter was granted: delete the keys of its meters and its pause (a
-- reset). Reservations already made keep their instants; giving one back, or settling
-- it for less, then finds nothing to give (its entry, or its bucket's latest, is gone).
--
-- KEYS: the keys to delete (under one hash tag)
-- Returns how many of them existed.
return redis.call('DEL', unpack(KEYS))
