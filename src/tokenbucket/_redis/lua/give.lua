-- Giving a reservation back (prepended, after log.lua, to the scripts that do).
--
-- A window entry is removed (that can only lower every window's sum), unless a server's
-- report has lowered the window since it was reserved (feedback.lua). A bucket's
-- reservation is given back only while it is the latest one on that bucket, so no one
-- reserved after it counted on it, and only once: the bucket then forgets its latest,
-- so giving the same reservation back again (a retry whose first reply was lost) finds
-- nothing to give.

local function give_back(kind, key, p1, span, amount, member, t)
  -- Give back `amount` that `member` reserved at `t` on one meter; 1 if given, else 0.
  if amount <= 0 then return 0 end
  if kind == 'b' then
    if redis.call('GET', key .. ':last') ~= member then return 0 end
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    local back = math.max(tat - amount / p1, t)
    if back > now then
      redis.call('SET', key, log_num(back), 'KEEPTTL')
    else
      redis.call('DEL', key)
    end
    redis.call('DEL', key .. ':last')
    return 1
  end
  local mark = tonumber(redis.call('GET', key .. ':mark') or '')
  if mark and t <= mark then return 0 end  -- covered by a server's count (feedback.lua)
  local entry = member .. ':' .. log_num(amount)
  local score = tonumber(redis.call('ZSCORE', key, entry))
  if not score then return 0 end
  local st = log_open(key, now, span)
  local given = redis.call('ZREM', key, entry)
  if given == 1 then log_change(st, score, -amount) end
  log_save(key, st)
  return given
end

