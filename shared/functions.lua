#!lua name=vigil_{V}
-- Vigil's Redis Functions. Loaded with FUNCTION LOAD REPLACE by every service at start
-- (idempotent), called with FCALL: each call is atomic, so any number of replicas may
-- fold concurrently and a crash between calls loses or doubles nothing.
--
-- Layout (docs/redis.md): status hash id -> StatusRecord JSON, summary hash of counters,
-- inventory hash id -> Instance JSON, origin string = the id before the first transition
-- of this Redis' data lifetime (a resume point older than it cannot be honoured).

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then
    ms = string.match(id, '^(%d+)$')
    seq = '0'
  end
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end

-- -1, 0, 1 like a comparator, over "ms-seq" stream ids.
local function cmp_id(a, b)
  local ams, aseq = parse_id(a)
  local bms, bseq = parse_id(b)
  if ams ~= bms then return ams < bms and -1 or 1 end
  if aseq ~= bseq then return aseq < bseq and -1 or 1 end
  return 0
end

local GONE = 'resume point no longer available'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ensure_origin(origin_key)
  if redis.call('EXISTS', origin_key) == 0 then
    redis.call('SET', origin_key, tostring(now_ms() - 1) .. '-0')
  end
end

local function summary(summary_key)
  local flat = redis.call('HGETALL', summary_key)
  local s = {running = 0, error = 0, unknown = 0}
  for i = 1, #flat, 2 do s[flat[i]] = tonumber(flat[i + 1]) end
  s.total = s.running + s.error + s.unknown
  return s
end

local function new_record(since)
  return {status = 'unknown', since = since, ok = 0, fail = 0, tick = 0}
end

local function dead_letter(dead_key, source_id, reason, raw)
  redis.call('XADD', dead_key, 'MAXLEN', '~', 10000, '*',
    'source', source_id, 'reason', reason, 'data', raw)
end

-- KEYS: probes, transitions, dead, inventory, status, summary, origin, inventory version
-- ARGV: group, transitions_maxlen, batch: a JSON array with one array per stream entry,
--   ["P", id, instance, tick, at_ms, at_iso, ok, latency_ms, reason|null, message|null]
--   ["D", id, reason, raw]   (a dead letter: undecodable or invalid)
-- One argument for the whole batch: per-argument encoding in the client cost more than
-- the fold itself. Returns {folded, stale, dead, transition ids...}
local function fold(keys, args)
  local probes, transitions, dead, inventory, status, summary_key, origin =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7]
  local group, maxlen = args[1], tonumber(args[2])
  -- Checked before any write: a Function is not rolled back when it fails half-way.
  if redis.call('EXISTS', keys[8]) == 0 then
    return redis.error_reply('NOINVENTORY no inventory in Redis: load it and fold again')
  end
  local batch = cjson.decode(args[3])
  local folded, stale, ndead = 0, 0, 0
  local out = {}
  local acks = {}
  for _, e in ipairs(batch) do
    local kind, id = e[1], e[2]
    acks[#acks + 1] = id
    if kind == 'D' then
      dead_letter(dead, id, e[3], e[4])
      ndead = ndead + 1
    else
      local instance = e[3]
      local tick, at, at_iso, ok, latency = e[4], e[5], e[6], e[7], e[8]
      local reason, message = e[9], e[10]
      if reason == cjson.null then reason = nil end
      if message == cjson.null then message = nil end
      local inv_raw = redis.call('HGET', inventory, instance)
      if not inv_raw then
        dead_letter(dead, id, 'instance: not in the inventory: ' .. instance, instance)
        ndead = ndead + 1
      else
        local raw = redis.call('HGET', status, instance)
        local rec = raw and cjson.decode(raw) or new_record(at)
        if tick <= (tonumber(rec.tick) or 0) then
          stale = stale + 1
        else
          folded = folded + 1
          local inv = cjson.decode(inv_raw)
          rec.tick, rec.checked_at, rec.latency_ms = tick, at, latency
          if ok then
            rec.ok, rec.fail = (tonumber(rec.ok) or 0) + 1, 0
          else
            rec.ok, rec.fail = 0, (tonumber(rec.fail) or 0) + 1
          end
          local from = rec.status
          local to = from
          if ok and from ~= 'running' and rec.ok >= (tonumber(inv.rise) or 1) then
            to = 'running'
          elseif (not ok) and from ~= 'error' and rec.fail >= (tonumber(inv.fall) or 2) then
            to = 'error'
          end
          if to == 'error' then
            -- While in error the reason follows the latest failure (refused -> timeout ...).
            if not ok then rec.reason, rec.message = reason or 'unknown', message end
          else
            rec.reason, rec.message = nil, nil
          end
          if to ~= from then
            rec.status, rec.since = to, at
            redis.call('HINCRBY', summary_key, from, -1)
            redis.call('HINCRBY', summary_key, to, 1)
            ensure_origin(origin)
            local name = inv.name
            if name == nil or name == '' then name = instance end
            local data = cjson.encode({
              instance = instance, name = name, from = from, to = to, at = at_iso,
              reason = rec.reason or cjson.null, message = rec.message or cjson.null,
              summary = summary(summary_key),
            })
            out[#out + 1] = redis.call('XADD', transitions, 'MAXLEN', '~', maxlen, '*',
              'data', data)
          end
          redis.call('HSET', status, instance, cjson.encode(rec))
        end
      end
    end
  end
  if #acks > 0 then
    redis.call('XACK', probes, group, unpack(acks))
  end
  local ret = {folded, stale, ndead}
  for _, t in ipairs(out) do ret[#ret + 1] = t end
  return ret
end

-- The id of the newest transition ever added (not less than the origin).
local function last_id(transitions, o)
  local cursor = o
  if redis.call('EXISTS', transitions) == 1 then
    local info = redis.call('XINFO', 'STREAM', transitions)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then cursor = info[i + 1] end
    end
    if cmp_id(cursor, o) < 0 then cursor = o end
  end
  return cursor
end

-- KEYS: inventory, version, status, summary, origin, transitions, inventory cursor
-- ARGV: version, then id, json pairs. Replaces the inventory atomically; new instances start
-- 'unknown', removed ones lose their status; the summary is recounted. Idempotent.
local function sync_inventory(keys, args)
  local inventory, version, status, summary_key, origin =
    keys[1], keys[2], keys[3], keys[4], keys[5]
  ensure_origin(origin)
  if redis.call('GET', version) == args[1] and redis.call('EXISTS', inventory) == 1 then
    return 0
  end
  local now = now_ms()
  local wanted = {}
  redis.call('DEL', inventory)
  for i = 2, #args, 2 do
    wanted[args[i]] = true
    redis.call('HSET', inventory, args[i], args[i + 1])
    if redis.call('HEXISTS', status, args[i]) == 0 then
      redis.call('HSET', status, args[i], cjson.encode(new_record(now)))
    end
  end
  local counts = {running = 0, error = 0, unknown = 0}
  local flat = redis.call('HGETALL', status)
  for i = 1, #flat, 2 do
    if wanted[flat[i]] then
      local good, rec = pcall(cjson.decode, flat[i + 1])
      if not good or type(rec) ~= 'table' or counts[rec.status] == nil then
        -- Not ours (written by hand?): start this instance over rather than fail.
        rec = new_record(now)
        redis.call('HSET', status, flat[i], cjson.encode(rec))
      end
      counts[rec.status] = counts[rec.status] + 1
    else
      redis.call('HDEL', status, flat[i])
    end
  end
  redis.call('DEL', summary_key)
  redis.call('HSET', summary_key, 'running', counts.running, 'error', counts.error,
    'unknown', counts.unknown)
  redis.call('SET', version, args[1])
  -- Where in the history it changed: a client resuming from before it gets a snapshot.
  redis.call('SET', keys[7], last_id(keys[6], redis.call('GET', origin)))
  return 1
end

-- KEYS: inventory, status, summary, transitions, origin, inventory version
-- Returns {cursor, origin, inventory flat, status flat, summary flat, inventory version}:
-- one consistent read.
local function snapshot(keys, args)
  local inventory, status, summary_key, transitions, origin =
    keys[1], keys[2], keys[3], keys[4], keys[5]
  local o = redis.call('GET', origin) or '0-0'
  local cursor = last_id(transitions, o)
  return {cursor, o, redis.call('HGETALL', inventory), redis.call('HGETALL', status),
    redis.call('HGETALL', summary_key), redis.call('GET', keys[6]) or ''}
end

-- Whether transitions after `after` may have left the stream (trimmed or deleted): a
-- reader that goes on from `after` would then miss them without knowing.
local function gone_after(transitions, after)
  if redis.call('EXISTS', transitions) == 0 then return false end
  local info = redis.call('XINFO', 'STREAM', transitions)
  local f = {}
  for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
  if cmp_id(after, f['max-deleted-entry-id']) < 0 then return true end  -- XDEL
  -- Trimming (MAXLEN / MINID) does not move max-deleted-entry-id: once any entry was
  -- trimmed, a point before the first entry kept may have missed some (a point that was
  -- exactly the last one trimmed counts as gone too: we cannot tell it apart).
  if f['entries-added'] ~= f['length'] then
    if f['length'] == 0 then return cmp_id(after, f['last-generated-id']) < 0 end
    return cmp_id(after, f['recorded-first-entry-id']) < 0
  end
  return false
end

-- nil when every transition after `since` is still in the stream, else why not: `since`
-- is from before this Redis' history (it lost its data, or `since` came from another
-- Redis), after its last id (another Redis, or none), or entries after it were trimmed.
local function not_kept_after(transitions, origin, since)
  local o = redis.call('GET', origin)
  if not o then return 'no history in this Redis' end
  if cmp_id(since, o) < 0 then return 'resume point older than this Redis\' history' end
  if redis.call('EXISTS', transitions) == 0 then
    if cmp_id(since, o) == 0 then return nil end
    return 'resume point not in this Redis\' history'
  end
  if cmp_id(since, last_id(transitions, o)) > 0 then
    return 'resume point not in this Redis\' history'
  end
  if gone_after(transitions, since) then return GONE end
  return nil
end

-- KEYS: transitions, origin, inventory cursor.  ARGV: since.
-- 'ok' when every transition after `since` is still in the stream ('ok, inventory changed'
-- when the inventory changed after it: the client's list of instances is out of date),
-- else the reason it is not.
local function resumable(keys, args)
  local since = args[1]
  if not parse_id(since) then return 'bad' end
  local why = not_kept_after(keys[1], keys[2], since)
  if why then return why end
  -- At the point of the change too: the change came after that transition (a client that
  -- got a snapshot since, with no transition after it, gets one more snapshot).
  local changed = redis.call('GET', keys[3])
  if changed and cmp_id(since, changed) <= 0 then return 'ok, inventory changed' end
  return 'ok'
end

-- KEYS: transitions, origin.  ARGV: after, count.
-- {'ok', entries...} with up to `count` entries after `after`, or {reason} when some after
-- it are not in this stream (trimmed, even meanwhile, or `after` is not from this Redis'
-- history; '0-0', the very beginning, always is): the check and the read in one atomic
-- call, so that a reader paging through history (a client catching up, REST) never skips
-- entries unawares.
local function history(keys, args)
  local after = args[1]
  if not parse_id(after) then return {'bad'} end
  local why
  if after == '0-0' then why = gone_after(keys[1], after) and GONE or nil
  else why = not_kept_after(keys[1], keys[2], after) end
  if why then return {why} end
  return {'ok', redis.call('XRANGE', keys[1], '(' .. after, '+', 'COUNT', args[2])}
end

-- KEYS: probes.  ARGV: maxlen, then newline-separated ProbeResult JSON documents
-- (JSON never holds a raw newline). One call adds a prober's whole batch.
local function publish(keys, args)
  local n = 0
  for doc in string.gmatch(args[2], '[^\n]+') do
    redis.call('XADD', keys[1], 'MAXLEN', '~', args[1], '*', 'data', doc)
    n = n + 1
  end
  return n
end

-- KEYS: probers (zset).  ARGV: prober id, expiry ms.
-- Renews one prober's membership with an expiry on Redis' clock, drops members whose
-- heartbeats stopped, returns the live members.
local function heartbeat(keys, args)
  local now = now_ms()
  redis.call('ZADD', keys[1], now + tonumber(args[2]), args[1])
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  return redis.call('ZRANGE', keys[1], 0, -1)
end

-- KEYS: one claim key per (instance, tick).  ARGV: prober id, then one PX (ms) per key.
-- SET NX PX each; returns 1 for the claims this prober won, 0 for the ones taken already.
local function claim(keys, args)
  local won = {}
  for i, key in ipairs(keys) do
    won[i] = redis.call('SET', key, args[1], 'NX', 'PX', args[i + 1]) and 1 or 0
  end
  return won
end

-- {V} is replaced by a digest of this file when it is loaded: two versions of Vigil
-- running side by side (a rolling upgrade) each keep their own functions.
redis.register_function('vigil_fold_{V}', fold)
redis.register_function('vigil_publish_{V}', publish)
redis.register_function('vigil_heartbeat_{V}', heartbeat)
redis.register_function('vigil_claim_{V}', claim)
redis.register_function('vigil_sync_inventory_{V}', sync_inventory)
redis.register_function{function_name = 'vigil_snapshot_{V}', callback = snapshot,
  flags = {'no-writes'}}
redis.register_function{function_name = 'vigil_resumable_{V}', callback = resumable,
  flags = {'no-writes'}}
redis.register_function{function_name = 'vigil_history_{V}', callback = history,
  flags = {'no-writes'}}
