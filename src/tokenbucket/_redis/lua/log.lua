-- Window logs (prepended to the scripts that use them).
--
-- An exact sliding window is a sorted set of grants scored by instant, members
-- '<id>:<amount>'. Beside it, the hash '<key>:sum' keeps 'all' (the sum of every entry),
-- 'cur' (an instant) and 'below' (the sum of the entries scored <= cur), so the amount
-- inside the window that ends at s is all - below once cur is moved to s - span. The
-- cursor only moves over the entries between its old and new place, and it moves
-- forward with the reservations, so each entry is read a constant number of times and a
-- reservation costs O(log n) plus the entries that must leave the window for it, not the
-- whole window.

local function log_amount(member)
  return tonumber(string.match(member, '^[^:]*:([^:]*)'))
end

local function log_num(x)
  return string.format('%.17g', x)
end

local function log_sum(key, lo, hi)
  -- The sum of the entries scored in (lo, hi].
  if hi <= lo then return 0 end
  local sum = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. log_num(lo), log_num(hi))) do
    sum = sum + log_amount(member)
  end
  return sum
end

local function log_open(key, now, span)
  -- Drop the entries that left the window at `now`; the log's sums, cursor >= now - span.
  local edge = now - span
  local got = redis.call('HMGET', key .. ':sum', 'all', 'cur', 'below')
  local all, cur, below = tonumber(got[1]), tonumber(got[2]), tonumber(got[3])
  local known = all ~= nil and cur ~= nil and below ~= nil
  if known and cur < edge then
    below = below + log_sum(key, cur, edge)
    cur = edge
  end
  local gone = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', log_num(edge))) do
    gone = gone + log_amount(member)
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', log_num(edge))
  if redis.call('ZCARD', key) == 0 then
    return {all = 0, cur = edge, below = 0}
  end
  if not known then
    -- No sums beside the log (lost, or written by an older version): count it once.
    return {all = log_sum(key, edge, math.huge), cur = edge, below = 0}
  end
  -- Everything dropped was scored <= edge <= cur.
  return {all = all - gone, cur = cur, below = below - gone}
end

local function log_move(key, st, to)
  -- Move the cursor to `to`.
  if to > st.cur then
    st.below = st.below + log_sum(key, st.cur, to)
  elseif to < st.cur then
    st.below = st.below - log_sum(key, to, st.cur)
  end
  st.cur = to
end

local function log_change(st, score, amount)
  -- An entry of `amount` (negative: removed) scored `score`.
  st.all = st.all + amount
  if score <= st.cur then st.below = st.below + amount end
end

local function log_save(key, st)
  -- Store the sums; they expire with the log (a log without sums is counted again).
  local aux = key .. ':sum'
  redis.call('HSET', aux, 'all', log_num(st.all), 'cur', log_num(st.cur), 'below', log_num(st.below))
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then
    redis.call('PEXPIRE', aux, ttl)
  elseif ttl == -2 then
    redis.call('DEL', aux)
  end
end

