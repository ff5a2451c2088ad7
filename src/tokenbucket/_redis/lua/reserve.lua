-- Reserve a batch of requests, in order, atomically (or undo a call whose reply was lost).
--
-- Every request is a list of meters that must all admit it at one instant t >= now. A
-- request gets the earliest such t (never earlier than any reservation already made on
-- its meters, so arrival at Redis defines the order), all its meters are charged at t,
-- and the caller sleeps until t. Nothing is charged for a request whose t would come
-- after its deadline.
--
-- The requests of one limiter share a shape (its meters, its pause key, its concurrency
-- slots), sent once per call; a request sends only its shape's number, its deadline and
-- its amounts. Request r's reservation is named '<call>.<r>' (its window entries, its
-- bucket's latest, its lease).
--
-- A call that reserves something is recorded under call_key (each request's status and
-- instant) for as long as what it reserved counts, at most record_ttl ms: the same call
-- sent again (a retry after its reply was lost on the way back) is answered from the
-- record and charges nothing again. With undo = 1, the call gives back what it
-- reserved if it ran, and its record then says 'undone' (for record_ttl ms) so that it
-- can never run later: for a caller that got an error instead of the reply.
--
-- KEYS: call_key, ...
-- ARGV: now, slack, record_ttl, undo, call, shapes, count
-- ARGV per shape (shapes): meters, pause, slots, slot_max, lease_ttl, rates, version
-- ARGV per meter (meters): kind, key, p1, p2
-- ARGV per request (count): shape, deadline, amounts
--   call_key   the record of this call (under the hash tag of its keys)
--   ...        the keys that the key, pause, slots and rates fields name
--   now        seconds since the epoch ('' = the server's TIME; see clock.lua)
--   slack      ms that keys outlive what they hold
--   record_ttl  ms a call's record lasts at most
--   undo       1: give back what this call reserved, or keep it from ever running
--   call       the call's id, unique to it
--   shapes     the number of shapes
--   count      the number of requests
--   meters     the number of the shape's meters
--   pause      index in KEYS of the pause key (0: none)
--   slots      index in KEYS of the slots key (0: none)
--   slot_max   the number of concurrency slots
--   lease_ttl  seconds a lease lasts
--   rates      index in KEYS of the limiter's rates hash (0: none; see update.lua)
--   version    the version of the rates hash the shape's parameters come from ('': none)
--   kind       'b' bucket | 'w' window
--   key        index in KEYS of the meter's key
--   p1         bucket: rate (units/s)    window: limit
--   p2         bucket: capacity          window: window (s)
--   shape      the request's shape (1 for the first)
--   deadline   seconds from now, or -1 for none
--   amounts    what the request takes of each of its shape's meters, space-separated
-- Returns one string: now, then per request its status and t - now, space-separated (a
-- call answered from its record: t as recorded, now as of this run; an undone call:
-- status 0). Status 1: reserved at t; 0: t is past the deadline (nothing taken); 2: no
-- concurrency slot free (nothing taken; t is when the first lease expires); 3: a key of
-- the request holds something else (nothing taken; instead of t - now, its index in KEYS);
-- 4: the limiter's rates changed since the version sent (nothing taken; read them and
-- ask again).
-- A bucket remembers the member of its latest reservation in '<key>:last', so a
-- give-back knows whether anyone reserved behind it. A window keeps its sums in
-- '<key>:sum' (see log.lua). Within a call, each key is read once and written once
-- (a window's entries are added one by one), whatever the number of requests.

local slack = tonumber(ARGV[2])
local record_ttl = tonumber(ARGV[3])
local undo = ARGV[4] == '1'
local call = ARGV[5]
local shape_count = tonumber(ARGV[6])
local count = tonumber(ARGV[7])
local pos = 8

local shapes = {}
for s = 1, shape_count do
  local shape = {
    meters = tonumber(ARGV[pos]),
    pause_index = tonumber(ARGV[pos + 1]),
    slot_index = tonumber(ARGV[pos + 2]),
    slot_max = tonumber(ARGV[pos + 3]),
    lease_ttl = tonumber(ARGV[pos + 4]),
    rates_index = tonumber(ARGV[pos + 5]),
    version = ARGV[pos + 6],
    specs = {},
  }
  pos = pos + 7
  for m = 1, shape.meters do
    local index = tonumber(ARGV[pos + 1])
    shape.specs[m] = {kind = ARGV[pos], key = KEYS[index], index = index,
                      p1 = tonumber(ARGV[pos + 2]), p2 = tonumber(ARGV[pos + 3])}
    pos = pos + 4
  end
  shapes[s] = shape
end

local requests = {}
for r = 1, count do
  local amounts = {}
  for amount in string.gmatch(ARGV[pos + 2], '%S+') do amounts[#amounts + 1] = tonumber(amount) end
  requests[r] = {shape = shapes[tonumber(ARGV[pos])], deadline = tonumber(ARGV[pos + 1]),
                 amounts = amounts, member = call .. '.' .. r}
  pos = pos + 3
end

-- A call seen before: answered from its record, or undone.
local record = redis.call('GET', KEYS[1])
if record == 'undone' or (undo and not record) then
  if undo then redis.call('SET', KEYS[1], 'undone', 'PX', record_ttl) end
  return log_num(now) .. string.rep(' 0 0', count)
end
if record then
  local out = {log_num(now)}
  local r = 0
  for status, t in string.gmatch(record, '(%d) (%S+)') do
    r = r + 1
    status = tonumber(status)
    if undo and status == 1 then
      local request = requests[r]
      local shape = request.shape
      for m = 1, shape.meters do
        local s = shape.specs[m]
        give_back(s.kind, s.key, s.p1, s.p2, request.amounts[m], request.member, tonumber(t))
      end
      if shape.slot_index > 0 then redis.call('ZREM', KEYS[shape.slot_index], request.member) end
    end
    if status == 3 then
      out[r + 1] = '3 ' .. t
    else
      out[r + 1] = status .. ' ' .. log_num(tonumber(t) - now)
    end
  end
  if undo then redis.call('SET', KEYS[1], 'undone', 'PX', record_ttl) end
  return table.concat(out, ' ')
end

-- What this call has read of each key, and charged to it; written back at the end.
local fits = {}    -- kind .. key: whether the key holds what its kind needs
local pauses = {}  -- pause key: the instant the pause ends
local slots = {}   -- slots key: {card = leases held, first = when the first expires}
local versions = {} -- rates key: its version
local tats = {}    -- bucket key: its theoretical arrival time
local logs = {}    -- window key: its log's sums (log.lua)
local ends = {}    -- window key: the latest instant in its log
local charged = {} -- keys charged, in order; bucket key: the member of its latest
local latest = {}
local ttls = {}    -- window or slots key: the ms it must live at least
local function charge(key, ttl)
  local before = ttls[key]
  if not before then
    charged[#charged + 1] = key
    ttls[key] = ttl
  elseif ttl > before then
    ttls[key] = ttl
  end
end

local function fit(kind, key)
  local id = kind .. key
  local ok = fits[id]
  if ok == nil then
    local found = redis.call('TYPE', key)['ok']
    if kind == 'b' then
      ok = found == 'none' or (found == 'string' and tonumber(redis.call('GET', key)) ~= nil)
    elseif kind == 'h' then
      ok = found == 'none' or found == 'hash'
    else
      ok = found == 'none' or found == 'zset'
    end
    fits[id] = ok
  end
  return ok
end

local out = {log_num(now)}
local saved = {}
local keep = 0  -- ms the longest charge of this call counts
for r = 1, count do
  local request = requests[r]
  local shape = request.shape
  local specs = shape.specs
  local amounts = request.amounts
  local status = 1
  local t = now
  local bad = nil
  for m = 1, shape.meters do
    if not fit(specs[m].kind, specs[m].key) then bad = specs[m].index end
  end
  if not bad and shape.rates_index > 0 and not fit('h', KEYS[shape.rates_index]) then
    bad = shape.rates_index
  end
  if bad then
    status = 3
  elseif shape.rates_index > 0 then
    local key = KEYS[shape.rates_index]
    local version = versions[key]
    if not version then
      version = redis.call('HGET', key, 'v') or ''
      versions[key] = version
    end
    if version ~= shape.version then status = 4 end
  end
  if shape.pause_index > 0 then
    local key = KEYS[shape.pause_index]
    local paused = pauses[key]
    if not paused then
      paused = tonumber(redis.call('GET', key) or '0')
      pauses[key] = paused
    end
    if paused > t then t = paused end
  end
  local lease = nil
  if shape.slot_index > 0 and status == 1 then
    local key = KEYS[shape.slot_index]
    lease = slots[key]
    if not lease then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      lease = {key = key, card = redis.call('ZCARD', key)}
      slots[key] = lease
    end
    if lease.card >= shape.slot_max then
      if not lease.first then
        lease.first = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
      end
      status = 2
      t = lease.first
    end
  end

  if status == 1 then
    -- The earliest instant every meter admits the request.
    for m = 1, shape.meters do
      local spec, amount = specs[m], amounts[m]
      local key, p1, p2 = spec.key, spec.p1, spec.p2
      if amount > 0 then
        if spec.kind == 'b' then
          local tat = tats[key]
          if not tat then
            tat = tonumber(redis.call('GET', key) or '0')
            tats[key] = tat
          end
          local at = tat + (amount - p2) / p1
          if at > t then t = at end
        else
          local st = logs[key]
          if not st then
            st = log_open(key, now, p2)
            logs[key] = st
            local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
            ends[key] = last[2] and tonumber(last[2]) or -math.huge
            charge(key, 0)  -- its sums are saved even if nothing is charged
          end
          local start = t
          if ends[key] > start then start = ends[key] end
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
    if request.deadline >= 0 and t - now > request.deadline then status = 0 end
  end

  if status == 1 then
    local member = request.member
    for m = 1, shape.meters do
      local spec, amount = specs[m], amounts[m]
      local key, p1, p2 = spec.key, spec.p1, spec.p2
      if amount > 0 then
        if spec.kind == 'b' then
          local tat = tats[key]
          if t > tat then tat = t end
          tat = later(tat, amount / p1)
          tats[key] = tat
          if not latest[key] then charged[#charged + 1] = key end
          latest[key] = member
        else
          local st = logs[key]
          local entry = member .. ':' .. log_num(amount)
          -- Already here (a run of this call whose record is gone): moved, not doubled.
          local before = tonumber(redis.call('ZSCORE', key, entry))
          if before then
            redis.call('ZREM', key, entry)
            log_change(st, before, -amount)
          end
          redis.call('ZADD', key, t, entry)
          if t > ends[key] then ends[key] = t end
          log_change(st, t, amount)
          charge(key, math.ceil((t + p2 - now) * 1000) + slack)
        end
      end
    end
    if lease then
      redis.call('ZADD', lease.key, now + shape.lease_ttl, member)
      lease.card = lease.card + 1
      lease.first = nil
      charge(lease.key, math.ceil(shape.lease_ttl * 1000) + slack)
    end
  end
  if status == 3 then
    out[r + 1] = '3 ' .. bad
    saved[r] = '3 ' .. bad
  else
    out[r + 1] = status .. ' ' .. log_num(t - now)
    saved[r] = status .. ' ' .. log_num(t)
  end
end

-- Write back what the call charged: each bucket once, each log's expiry and sums once.
for _, key in ipairs(charged) do
  local tat = latest[key] and tats[key]
  if tat then
    local ttl = math.ceil((tat - now) * 1000) + slack
    redis.call('SET', key, log_num(tat), 'PX', ttl)
    redis.call('SET', key .. ':last', latest[key], 'PX', ttl)
    keep = math.max(keep, ttl)
  else
    local ttl = ttls[key]
    if ttl > 0 then
      redis.call('PEXPIRE', key, ttl)
      keep = math.max(keep, ttl)
    end
    if logs[key] then log_save(key, logs[key]) end
  end
end
if keep > 0 then
  redis.call('SET', KEYS[1], table.concat(saved, ' '), 'PX', math.min(keep, record_ttl))
end
return table.concat(out, ' ')
