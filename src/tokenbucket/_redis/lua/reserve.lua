-- Reserve a batch of requests, in order, atomically (or undo a call whose reply was lost).
--
-- Every request is a list of meters that must all admit it at one instant t >= now. A
-- request gets the earliest such t (never earlier than any reservation already made on
-- its meters, so arrival at Redis defines the order), all its meters are charged at t,
-- and the caller sleeps until t. Nothing is charged for a request whose t would come
-- after its deadline.
--
-- A call that reserves something is recorded under call_key (each request's status and
-- instant) for as long as what it reserved counts, at most record_ttl ms: the same call
-- sent again (a retry after its reply was lost on the way back) is answered from the
-- record and charges nothing again. With undo = 1, the call gives back what it
-- reserved if it ran, and its record then says 'undone' (for record_ttl ms) so that it
-- can never run later: for a caller that got an error instead of the reply.
--
-- KEYS: call_key, ...
-- ARGV: now, slack, record_ttl, undo, count
-- ARGV per request (count): meters, deadline, pause, slots, slot_max, lease, lease_ttl
-- ARGV per meter (meters): kind, key, p1, p2, amount, member
--   call_key   the record of this call (its id, under the hash tag of its keys)
--   ...        the keys that the key, pause and slots fields name
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   slack      ms that keys outlive what they hold
--   record_ttl  ms a call's record lasts at most
--   undo       1: give back what this call reserved, or keep it from ever running
--   count      the number of requests
--   meters     the number of the request's meters
--   deadline   seconds from now, or -1 for none
--   pause      index in KEYS of the pause key (0: none)
--   slots      index in KEYS of the slots key (0: none)
--   slot_max   the number of concurrency slots
--   lease      the lease id ('' for none)
--   lease_ttl  seconds a lease lasts
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   amount     what the request takes
--   member     the reservation's id
-- Returns per request: {status, t - now (string), now (string)} (a call answered from
-- its record: t as recorded, now as of this run; an undone call: status 0)
--   status 1: reserved at t; 0: t is past the deadline (nothing taken);
--   2: no concurrency slot free (nothing taken; t - now is when the first lease expires);
--   3: a key of the request holds something else (nothing taken; the third field names it)
-- A bucket remembers the member of its latest reservation in '<key>:last', so a
-- give-back knows whether anyone reserved behind it. A window keeps its sums in
-- '<key>:sum' (see log.lua).

local slack = tonumber(ARGV[2])
local record_ttl = tonumber(ARGV[3])
local undo = ARGV[4] == '1'
local count = tonumber(ARGV[5])
local pos = 6
local out = {}

local function later(base, step)
  -- base + step, rounded up: epoch seconds in a double are ~2e-7 apart, and a schedule
  -- that rounds to nearest on every grant would drift early.
  local sum = base + step
  if sum - base < step then
    local m, e = math.frexp(sum)
    sum = sum + 2 ^ (e - 53)
  end
  return sum
end

local requests = {}
for r = 1, count do
  local request = {
    meters = tonumber(ARGV[pos]),
    deadline = tonumber(ARGV[pos + 1]),
    pause_index = tonumber(ARGV[pos + 2]),
    slot_index = tonumber(ARGV[pos + 3]),
    slot_max = tonumber(ARGV[pos + 4]),
    lease = ARGV[pos + 5],
    lease_ttl = tonumber(ARGV[pos + 6]),
    specs = {},
  }
  pos = pos + 7
  for m = 1, request.meters do
    request.specs[m] = {ARGV[pos], KEYS[tonumber(ARGV[pos + 1])], tonumber(ARGV[pos + 2]),
                        tonumber(ARGV[pos + 3]), tonumber(ARGV[pos + 4]), ARGV[pos + 5]}
    pos = pos + 6
  end
  requests[r] = request
end

-- A call seen before: answered from its record, or undone.
local record = redis.call('GET', KEYS[1])
if record == 'undone' or (undo and not record) then
  if undo then redis.call('SET', KEYS[1], 'undone', 'PX', record_ttl) end
  for r = 1, count do out[r] = {0, '0', log_num(now)} end
  return out
end
if record then
  local saved = cjson.decode(record)
  for r = 1, count do
    local status, t, named = saved[r][1], tonumber(saved[r][2]), saved[r][3]
    if undo and status == 1 then
      local request = requests[r]
      for m = 1, request.meters do
        local s = request.specs[m]
        give_back(s[1], s[2], s[3], s[4], s[5], s[6], t)
      end
      if request.slot_index > 0 then redis.call('ZREM', KEYS[request.slot_index], request.lease) end
    end
    if status == 3 then
      out[r] = {status, '0', named}
    else
      out[r] = {status, log_num(t - now), log_num(now)}
    end
  end
  if undo then redis.call('SET', KEYS[1], 'undone', 'PX', record_ttl) end
  return out
end

local saved = {}
local keep = 0  -- ms the longest charge of this call counts
for r = 1, count do
  local request = requests[r]
  local meters = request.meters
  local deadline = request.deadline
  local pause_index = request.pause_index
  local slot_index = request.slot_index
  local slot_max = request.slot_max
  local lease = request.lease
  local lease_ttl = request.lease_ttl
  local specs = request.specs
  local status = 1
  local t = now
  local bad = nil
  for m = 1, meters do
    local kind, key = specs[m][1], specs[m][2]
    local found = redis.call('TYPE', key)['ok']
    if kind == 'b' then
      if found ~= 'none' and (found ~= 'string' or tonumber(redis.call('GET', key)) == nil) then
        bad = key
      end
    elseif found ~= 'none' and found ~= 'zset' then
      bad = key
    end
  end
  if bad then status = 3 end
  if pause_index > 0 then
    local paused = tonumber(redis.call('GET', KEYS[pause_index]) or '0')
    if paused > t then t = paused end
  end
  local slots_key = nil
  if slot_index > 0 and status == 1 then
    slots_key = KEYS[slot_index]
    redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', now)
    if redis.call('ZCARD', slots_key) >= slot_max then
      local first = redis.call('ZRANGE', slots_key, 0, 0, 'WITHSCORES')
      status = 2
      t = tonumber(first[2])
    end
  end

  if status == 1 then
    -- The earliest instant every meter admits the request.
    for m = 1, meters do
      local kind, key, p1, p2, amount = specs[m][1], specs[m][2], specs[m][3], specs[m][4], specs[m][5]
      if amount > 0 then
        if kind == 'b' then
          local tat = tonumber(redis.call('GET', key) or '0')
          local at = tat + (amount - p2) / p1
          if at > t then t = at end
        else
          local st = log_open(key, now, p2)
          specs[m][7] = st
          local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
          local start = t
          if last[2] and tonumber(last[2]) > start then start = tonumber(last[2]) end
          log_move(key, st, start - p2)
          local inside = st.all - st.below
          local at = start
          -- Not enough room: walk the window's oldest entries until enough has left.
          local offset = 0
          while inside + amount > p1 do
            local page = redis.call('ZRANGEBYSCORE', key, '(' .. log_num(st.cur), '+inf',
                                    'WITHSCORES', 'LIMIT', offset, 64)
            if #page == 0 then break end
            for i = 1, #page, 2 do
              inside = inside - log_amount(page[i])
              at = tonumber(page[i + 1]) + p2
              if inside + amount <= p1 then break end
            end
            offset = offset + #page / 2
          end
          if at > t then t = at end
        end
      end
    end
    if deadline >= 0 and t - now > deadline then
      status = 0
      -- Nothing is charged; keep what opening the logs dropped (charging saves it).
      for m = 1, meters do
        if specs[m][7] then log_save(specs[m][2], specs[m][7]) end
      end
    end
  end

  if status == 1 then
    for m = 1, meters do
      local kind, key, p1, p2, amount, member = specs[m][1], specs[m][2], specs[m][3], specs[m][4], specs[m][5], specs[m][6]
      if amount > 0 then
        if kind == 'b' then
          local tat = tonumber(redis.call('GET', key) or '0')
          if t > tat then tat = t end
          tat = later(tat, amount / p1)
          local ttl = math.ceil((tat - now) * 1000) + slack
          redis.call('SET', key, string.format('%.17g', tat), 'PX', ttl)
          redis.call('SET', key .. ':last', member, 'PX', ttl)
          keep = math.max(keep, ttl)
        else
          local st = specs[m][7]
          local entry = member .. ':' .. string.format('%.17g', amount)
          -- Already here (a run of this call whose record is gone): moved, not doubled.
          local before = tonumber(redis.call('ZSCORE', key, entry))
          if before then
            redis.call('ZREM', key, entry)
            log_change(st, before, -amount)
          end
          redis.call('ZADD', key, t, entry)
          local ttl = math.ceil((t + p2 - now) * 1000) + slack
          redis.call('PEXPIRE', key, ttl)
          log_change(st, t, amount)
          log_save(key, st)
          keep = math.max(keep, ttl)
        end
      end
    end
    if slots_key then
      redis.call('ZADD', slots_key, now + lease_ttl, lease)
      redis.call('PEXPIRE', slots_key, math.ceil(lease_ttl * 1000) + slack)
      keep = math.max(keep, math.ceil(lease_ttl * 1000) + slack)
    end
  end
  if status == 3 then
    out[#out + 1] = {status, '0', bad}
  else
    out[#out + 1] = {status, string.format('%.17g', t - now), string.format('%.17g', now)}
  end
  saved[#saved + 1] = {status, log_num(t), bad or ''}
end
if keep > 0 then
  redis.call('SET', KEYS[1], cjson.encode(saved), 'PX', math.min(keep, record_ttl))
end
return out
