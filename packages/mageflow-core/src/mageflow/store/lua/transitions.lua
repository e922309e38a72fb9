-- MageFlow state transitions. One call = one atomic transition of one workflow.
--
-- KEYS[1]  the workflow hash "<prefix>:{<wf>}"; auxiliary keys share its hash tag:
--          <H>:q:<sid> swarm queue (list of item sids), <H>:r:<sid> running items (set),
--          <H>:h:<sid> publishes held while <sid> is suspended (list).
-- ARGV[1]  operation, ARGV[2] now (ms), ARGV[3] active TTL (s), ARGV[4] finished TTL (s),
-- ARGV[5..] operation arguments.
--
-- Hash fields: "<sid>" structural definition (JSON, never user data); "<sid>:<f>" state.
-- Never call HMGET/HSETNX here: the benchmark counts them as client round trips.
-- User JSON (messages, kwargs, results, errors) is only ever concatenated, never decoded,
-- so that it round-trips byte for byte.
-- The Python MemoryStore mirrors this file function by function; keep them in step.

local H = KEYS[1]
local OP = ARGV[1]
local NOW = ARGV[2]
local TTL_ACTIVE = tonumber(ARGV[3])
local TTL_DONE = tonumber(ARGV[4])

local TERMINAL = { done = true, failed = true, canceled = true }
local HOLDING = { suspended = true, interrupted = true }

local pubs = {}
local events = {}
local aux = {}

local function get(sid, f)
  local v = redis.call('HGET', H, sid .. ':' .. f)
  if v == false then return nil end
  return v
end

local function set(sid, f, v)
  redis.call('HSET', H, sid .. ':' .. f, v)
end

local defs = {}

-- Definitions never change once written: decode each at most once per call.
local function def(sid)
  local d = defs[sid]
  if d == nil then
    local raw = redis.call('HGET', H, sid)
    if raw == false then return nil end
    d = cjson.decode(raw)
    defs[sid] = d
  end
  return d
end

local function key(kind, sid)
  local k = H .. ':' .. kind .. ':' .. sid
  aux[k] = true
  return k
end

local function up(d)
  return d.p or d.o
end

local function join(a, b)
  if a == nil or a == '' then return b or '' end
  if b == nil or b == '' then return a end
  return a .. ',' .. b
end

local function payload(inl, own, ret, err)
  local parts = { '"in":[' .. (inl or '') .. ']' }
  if own then parts[#parts + 1] = '"own":' .. own end
  if ret then parts[#parts + 1] = '"ret":' .. ret end
  if err then parts[#parts + 1] = '"err":' .. err end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function spec(task, sid, pl)
  return '[' .. cjson.encode(task) .. ',' .. cjson.encode(sid) .. ',' .. pl .. ']'
end

-- The nearest node from sid upwards that is canceled or holds (suspended/interrupted).
local function blocker(sid)
  local cur = sid
  while cur do
    local st = get(cur, 's')
    if st == 'canceled' then return 'canceled', cur end
    if HOLDING[st] then return 'hold', cur end
    local d = def(cur)
    cur = d and up(d)
  end
  return nil, nil
end

local function emit(sid, task, pl)
  local why, at = blocker(sid)
  if why == 'canceled' then return end
  if why == 'hold' then
    redis.call('RPUSH', key('h', at), spec(task, sid, pl))
    return
  end
  pubs[#pubs + 1] = spec(task, sid, pl)
end

local start_node, settle, fill

local function queue_unqueued(s)
  local items = redis.call('LRANGE', key('i', s), tonumber(get(s, 'qd') or '0'), -1)
  for _, it in ipairs(items) do
    if not get(it, 'q') then
      set(it, 'q', '1')
      redis.call('RPUSH', key('q', s), it)
    end
  end
  set(s, 'qd', redis.call('LLEN', key('i', s)))
end

local function maybe_complete(s)
  if get(s, 'closed') ~= '1' or get(s, 'd') == nil or TERMINAL[get(s, 's')] then return end
  local n = redis.call('LLEN', key('i', s))
  if tonumber(get(s, 'fin') or '0') < n then return end
  local items = redis.call('LRANGE', key('i', s), 0, -1)
  local out = {}
  for i, it in ipairs(items) do
    if get(it, 's') == 'done' then
      out[i] = get(it, 'r') or 'null'
    else
      out[i] = '{"mageflow_error":' .. (get(it, 'e') or 'null') .. '}'
    end
  end
  settle(s, true, '[' .. table.concat(out, ',') .. ']', nil)
end

fill = function(s)
  local st = get(s, 's')
  if TERMINAL[st] or get(s, 'd') == nil then return end
  local why, at = blocker(s)
  if why == 'canceled' then return end
  if why == 'hold' then
    redis.call('RPUSH', key('h', at), cjson.encode({ 'fill', s }))
    return
  end
  local d = def(s)
  local running = tonumber(get(s, 'run') or '0')
  local mi, mr, me = get(s, 'mi'), get(s, 'mr'), get(s, 'me')
  while d.mc == nil or running < d.mc do
    local it = redis.call('LPOP', key('q', s))
    if not it then break end
    running = running + 1
    set(s, 'run', running)
    redis.call('SADD', key('r', s), it)
    start_node(it, mi, get(it, 'own'), mr, me)
  end
end

start_node = function(sid, inl, own, ret, err)
  local d = def(sid)
  set(sid, 'd', NOW)
  if d.k == 'task' then
    emit(sid, d.t, payload(inl, own, ret, err))
    return
  end
  local mi = join(inl, own)
  set(sid, 's', 'active')
  set(sid, 't0', NOW)
  set(sid, 'mi', mi)
  if ret then set(sid, 'mr', ret) end
  if err then set(sid, 'me', err) end
  if d.k == 'chain' then
    set(sid, 'cur', 0)
    if #d.steps == 0 then
      settle(sid, true, ret or 'null', nil)
    else
      start_node(d.steps[1], mi, nil, ret, err)
    end
  else
    queue_unqueued(sid)
    fill(sid)
    maybe_complete(sid)
  end
end

local function chain_step_done(c, sid, ok, val)
  if TERMINAL[get(c, 's')] then return end
  local cd = def(c)
  local cur = tonumber(get(c, 'cur') or '0')
  if cd.steps[cur + 1] ~= sid then return end
  if not ok then
    settle(c, false, val, get(c, 'mi'))
  elseif cur + 1 < #cd.steps then
    set(c, 'cur', cur + 1)
    events[#events + 1] = cjson.encode({ 'advanced', c, cd.steps[cur + 2] })
    start_node(cd.steps[cur + 2], '', nil, val, nil)
  else
    settle(c, true, val, nil)
  end
end

local function swarm_item_done(s, sid, ok, val)
  if redis.call('SREM', key('r', s), sid) == 1 then
    redis.call('HINCRBY', H, s .. ':run', -1)
  end
  redis.call('HINCRBY', H, s .. ':fin', 1)
  events[#events + 1] = cjson.encode({ 'item', s, sid, ok and 'done' or 'failed' })
  local nf = tonumber(get(s, 'nf') or '0')
  if not ok then nf = redis.call('HINCRBY', H, s .. ':nf', 1) end
  if TERMINAL[get(s, 's')] then return end
  local d = def(s)
  if not ok and d.sa ~= nil and nf >= d.sa then
    redis.call('DEL', key('q', s))
    local last = cjson.decode(val)
    local msg = string.format('%d item(s) failed (stop_after_n_failures=%d); last: %s: %s',
      nf, d.sa, tostring(last.type), tostring(last.message))
    settle(s, false, cjson.encode({ type = 'SwarmFailed', message = msg }), get(s, 'mi'))
    return
  end
  fill(s)
  maybe_complete(s)
end

settle = function(sid, ok, val, inl)
  local d = def(sid)
  set(sid, 't1', NOW)
  if ok then
    set(sid, 's', 'done')
    set(sid, 'r', val)
    for _, cb in ipairs(d.ok or {}) do start_node(cb, '', nil, val, nil) end
  else
    set(sid, 's', 'failed')
    set(sid, 'e', val)
    for _, cb in ipairs(d.err or {}) do start_node(cb, inl, nil, nil, val) end
  end
  events[#events + 1] = cjson.encode({ ok and 'done' or 'failed', sid, d.k, get(sid, 't0') or NOW })
  if get(sid, 'w') then redis.call('PUBLISH', H .. ':done', sid) end
  if d.p then
    local pd = def(d.p)
    if pd.k == 'chain' then
      chain_step_done(d.p, sid, ok, val)
    else
      swarm_item_done(d.p, sid, ok, val)
    end
  end
end

local function encoded_pubs()
  return '[' .. table.concat(pubs, ',') .. ']'
end

local function encoded_events()
  return '[' .. table.concat(events, ',') .. ']'
end

-- Collect run ids of active tasks under sid and hold them for re-publishing on resume.
local function take_running(sid, holder, out)
  local d = def(sid)
  if d.k == 'task' then
    if get(sid, 's') == 'active' then
      out[#out + 1] = get(sid, 'rid')
      set(sid, 's', 'pending')
      redis.call('RPUSH', key('h', holder), spec(d.t, sid, get(sid, 'pl') or payload('', nil, nil, nil)))
    end
  elseif d.k == 'chain' then
    if get(sid, 'd') and not TERMINAL[get(sid, 's')] then
      take_running(d.steps[tonumber(get(sid, 'cur') or '0') + 1], holder, out)
    end
  else
    for _, it in ipairs(redis.call('SMEMBERS', key('r', sid))) do
      take_running(it, holder, out)
    end
  end
end

local result

if OP == 'start' then
  local sid, rid, pl = ARGV[5], ARGV[6], ARGV[7]
  local d = def(sid)
  if d == nil then
    result = { 'missing' }
  else
    local st = get(sid, 's')
    if st == 'done' or st == 'failed' then
      if get(sid, 'rid') == rid then
        result = { 'redo', get(sid, 'o') or '[]' }
      else
        result = { 'dup' }
      end
    elseif st == 'canceled' then
      result = { 'dropped' }
    elseif st == 'active' and get(sid, 'rid') ~= rid then
      result = { 'dup' }
    else
      local why, at = blocker(sid)
      if why == 'canceled' then
        result = { 'dropped' }
      elseif why == 'hold' then
        redis.call('RPUSH', key('h', at), spec(d.t, sid, pl))
        result = { 'held' }
      else
        set(sid, 's', 'active')
        set(sid, 'rid', rid)
        set(sid, 'pl', pl)
        if not get(sid, 't0') then set(sid, 't0', NOW) end
        local a = redis.call('HINCRBY', H, sid .. ':a', 1)
        result = { 'run', get(sid, 'kw') or '{}', tostring(a) }
      end
    end
  end
elseif OP == 'finish' then
  local sid, ok, val, inp = ARGV[5], ARGV[6] == '1', ARGV[7], ARGV[8]
  local st = get(sid, 's')
  if st == nil and def(sid) == nil then
    result = { 'missing' }
  elseif TERMINAL[st] then
    result = { 'dup', get(sid, 'o') or '[]' }
  else
    settle(sid, ok, val, inp)
    local enc = encoded_pubs()
    set(sid, 'o', enc)
    result = { 'ok', enc, encoded_events() }
  end
elseif OP == 'run' then
  local sid, own, watch = ARGV[5], ARGV[6], ARGV[7] == '1'
  local d = def(sid)
  if d == nil then
    result = { 'err', 'missing' }
  elseif get(sid, 'd') or get(sid, 'q') then
    result = { 'err', 'already_run' }
  elseif d.o then
    result = { 'err', 'callback' }
  else
    if own == '' then own = nil end
    if watch then set(sid, 'w', '1') end
    local pd = d.p and def(d.p)
    if pd and pd.k == 'swarm' then
      if TERMINAL[get(d.p, 's')] then
        result = { 'err', 'swarm_finished' }
      else
        if own then set(sid, 'own', own) end
        set(sid, 'q', '1')
        redis.call('RPUSH', key('q', d.p), sid)
        fill(d.p)
        result = { 'ok', encoded_pubs(), encoded_events() }
      end
    elseif pd then
      result = { 'err', 'chain_step' }
    else
      start_node(sid, '', own, nil, nil)
      set(sid, 'o', encoded_pubs())
      result = { 'ok', encoded_pubs(), encoded_events() }
    end
  end
elseif OP == 'add' then
  local s, it = ARGV[5], ARGV[6]
  if def(s) == nil then
    result = { 'err', 'missing' }
  elseif get(s, 'closed') == '1' then
    result = { 'err', 'closed' }
  elseif TERMINAL[get(s, 's')] then
    result = { 'err', 'swarm_finished' }
  else
    for i = 7, #ARGV, 2 do redis.call('HSET', H, ARGV[i], ARGV[i + 1]) end
    redis.call('RPUSH', key('i', s), it)
    result = { 'ok' }
  end
elseif OP == 'close' then
  local s = ARGV[5]
  if def(s) == nil then
    result = { 'err', 'missing' }
  else
    set(s, 'closed', '1')
    if get(s, 'd') and not TERMINAL[get(s, 's')] then
      queue_unqueued(s)
      fill(s)
      maybe_complete(s)
    end
    result = { 'ok', encoded_pubs(), encoded_events() }
  end
elseif OP == 'suspend' then
  local sid, mode, cancel = ARGV[5], ARGV[6], ARGV[7] == '1'
  local st = get(sid, 's')
  if def(sid) == nil then
    result = { 'err', 'missing' }
  elseif TERMINAL[st] then
    result = { 'err', 'finished', st }
  else
    if not HOLDING[st] then set(sid, 'ps', st or 'pending') end
    if st ~= 'interrupted' then set(sid, 's', mode) end
    local rids = {}
    if mode == 'interrupted' and cancel then take_running(sid, sid, rids) end
    result = { 'ok', cjson.encode(rids) }
  end
elseif OP == 'resume' then
  local sid = ARGV[5]
  local st = get(sid, 's')
  if def(sid) == nil then
    result = { 'err', 'missing' }
  elseif TERMINAL[st] then
    result = { 'err', 'finished', st }
  elseif not HOLDING[st] then
    result = { 'ok', get(sid, 'ro') or '[]' }
  else
    set(sid, 's', get(sid, 'ps') or 'pending')
    local held = redis.call('LRANGE', key('h', sid), 0, -1)
    redis.call('DEL', key('h', sid))
    for _, entry in ipairs(held) do
      if string.sub(entry, 1, 8) == '["fill",' then
        fill(cjson.decode(entry)[2])
      else
        pubs[#pubs + 1] = entry
      end
    end
    if def(sid).k == 'swarm' then fill(sid) end
    local enc = encoded_pubs()
    set(sid, 'ro', enc)
    result = { 'ok', enc, encoded_events() }
  end
elseif OP == 'cancel' then
  local sid = ARGV[5]
  local st = get(sid, 's')
  local d = def(sid)
  if d == nil then
    result = { 'err', 'missing' }
  elseif TERMINAL[st] then
    result = { 'err', 'finished', st }
  elseif up(d) then
    result = { 'err', 'not_root' }
  else
    local rids = {}
    take_running(sid, sid, rids)
    redis.call('DEL', key('h', sid))
    set(sid, 's', 'canceled')
    set(sid, 't1', NOW)
    if get(sid, 'w') then redis.call('PUBLISH', H .. ':done', sid) end
    result = { 'ok', cjson.encode(rids) }
  end
else
  return redis.error_reply('mageflow: unknown operation ' .. tostring(OP))
end

local ttl = TTL_ACTIVE
if TERMINAL[get('r', 's')] then ttl = TTL_DONE end
redis.call('EXPIRE', H, ttl)
for k, _ in pairs(aux) do
  redis.call('EXPIRE', k, ttl)
end
return result
