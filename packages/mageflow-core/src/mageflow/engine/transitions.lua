-- MageFlow engine: the one orchestration state machine. One call = one atomic transition
-- of one workflow. Redis runs it with EVALSHA; the embedded default runs this same file
-- in-process (mageflow.store.lua_host). Nothing else decides what runs next.
--
-- CALL   KEYS[1] the workflow hash H = "<prefix>:{<wf>}" (the live index for op "claim")
--        ARGV[1] op, ARGV[2] now (ms), ARGV[3] TTL while active (s), ARGV[4] TTL once the
--        root finished (s), ARGV[5] resend delay (ms), ARGV[6..] the op's arguments.
-- REPLY  a flat array of strings; mageflow/engine/replies.py decodes it.
--
-- KEYS (all share H's hash tag, so one call touches one Cluster slot)
--   H                      hash: "<sid>" = definition JSON, "<sid>:<field>" = state
--   H:steps:<chain>        list of the chain's step sids, in order
--   H:items:<swarm>        list of the swarm's item sids, in item order
--   H:queue:<swarm>        zset of items waiting for a free slot; score orders them:
--                          higher priority first, first queued first within a priority
--   H:running:<swarm>      set of items holding a slot
--   H:nodes:<graph>        list of the graph's node sids, in the order given
--   H:sources:<graph> / H:sinks:<graph>  lists of its nodes without dependencies / that
--                          nothing depends on (ready at start / its result)
--   H:queue:<graph>, H:running:<graph>  ready nodes waiting for a slot / holding one (as
--                          a swarm's)
--   H:held:<node>          list of JSON entries held while <node> is suspended/interrupted:
--                          ["pub",sid] publish task sid; ["fill",swarm] start queued items;
--                          ["settle",sid,input] sid finished while itself held;
--                          ["after",sid,input] sid finished under a held ancestor: its
--                          callbacks and its parent's advancement wait
--   H:sent                 zset: task sids dispatched and not started yet; score = when the
--                          reconciler may re-send (ms)
--   H:inflight             set: task sids started and not finished (a workflow with none, and
--                          nothing in H:sent or H:delayed, cannot dispatch on its own: the
--                          reconciler may forget it)
--   H:delayed              zset: nodes whose start the engine holds until a time; score = that
--                          time (ms); the reconciler's pass releases them when due
--   H:done                 pub/sub channel: a watched node settled (message = sid)
--   H:events               stream: one entry per call that changed a status (field e: JSON
--                          array of [sid, event, kind, task, ms, attempt, status]), capped at
--                          EVENTS_MAX entries; wf.events() reads it
--   H:conts                set: the roots of workflows tasks returned to run in their place
--                          (reached by the root's final expiry like the rest)
--   KEYS[2] (optional)     statistics: "<prefix>:stats"; each minute m has the hash
--                          KEYS[2]..':'..m (its own Cluster slot, see STATISTICS below)
--
-- DEFINITION (JSON, written once by the client, never user data)
--   k kind: task|chain|swarm|graph|branch   t task name        n display name
--   p parent (chain, swarm, graph or branch)  of owner: the node whose callback this is
--   ok / err callback sids     mc max_concurrency  sa stop_after_n_failures
--   pr priority 0..9 (higher starts first among queued swarm items; default 0; also sent
--      to the task manager)
--   dl start this many ms after becoming due   at  start no earlier than this ms timestamp
--   nd '1': the task manager holds dl/at (the engine dispatches at once, with the time)
--   q  the queue (worker capability) the task is routed to; sent to the task manager
--   (a chain's steps are the list H:steps:<chain>, so an event reads one step, not all)
--   graph node: gn its name in the graph; rq / oq required / optional dependency sids;
--      rd / od its out-edges: the nodes that require it / for which it is optional
--   branch: sl selector sid; cs {case key: sid}; df default case sid
--
-- STATE FIELDS "<sid>:<field>"                                  written by
--   status     pending|active|suspended|interrupted|canceled|done|failed|skipped  engine
--              (skipped: a graph node whose required dependency did not succeed, or a
--              branch case not chosen; it never runs, its callbacks never fire)
--   held_from  status to restore on resume                     suspend
--   created    ms the node was built                           client
--   kwargs     signature kwargs JSON (a chain's / swarm's: the context every node under it
--              receives); idents task_identifiers   client (start replies both)
--   context    a started composite's context: its ancestors' kwargs and its own, joined
--              by ','  (chain steps after the first and callbacks receive it)   start_node
--   due        ms the node may start (dl / at fixed when it first became due)  not_before
--   deferred   JSON [inl, own, ret, err] a delayed node starts with once due   start_node
--   own        a swarm item's own run message JSON             run
--   sent       ms the engine started/dispatched the node       start_node
--   queued     '1' once on its swarm's queue                   run, queue_unqueued
--   qseq       swarm: items queued so far (FIFO order within a priority)  enqueue
--   started / ended   ms of the first attempt / of settling    start, settle
--   input      a composite's inherited messages: JSON objects joined by ','   start_node
--   input_ret / input_err  result / error a composite was started with        start_node
--   step       chain: 0-based index of the running step        start_node, chain_step_done
--   scanned    swarm: items already considered for queueing    queue_unqueued
--   closed     swarm: '1' when it takes no more items          client, close
--   n_running / n_ended / n_failed  swarm item counters        fill, swarm_item_done
--   result / error   the node's result JSON / {"type","message"} JSON        settle
--   outcome    done|failed recorded while the node itself is held            settle
--   waited     '1' when a client waits: settling PUBLISHes on H:done         client
--   run_id / attempts   the run executing a task, attempts made             start
--   lease      ms until which the running attempt of run_id holds the task: a copy of
--              the same run waits ('leased') instead of running user code   start, lease
--   payload    a task's payload when it cannot be rebuilt from its swarm     emit
--   owed       JSON array of sids a task's finish dispatched (re-sent on redelivery)  finish
--   resends    how often the reconciler re-sent the task       resend
--   n_deps     graph node: dependencies not finished yet (0: ready)   client, engine
--   chosen     branch: the case its selector picked                 branch_child_done
--   rerun      '1': a failed composite swarm item (or task with a continuation) retry
--              queued again; resumes from its failure point when it gets a slot   retry
--   cont       the root sid of the workflow task sid returned to run in its place; the
--              task settles with that workflow's outcome               continue
--
-- User JSON (messages, kwargs, results, errors) is concatenated, never decoded, so it
-- round-trips byte for byte (cjson would turn [] into {}).

local H = KEYS[1]
local OP = ARGV[1]
local NOW_S = ARGV[2]
local NOW = tonumber(ARGV[2])
local TTL_ACTIVE = tonumber(ARGV[3])
local TTL_DONE = tonumber(ARGV[4])
local RESEND_AFTER = tonumber(ARGV[5])

-- claim: lease up to ARGV[7] workflows due in the live index KEYS[1] for ARGV[6] ms.
if OP == 'claim' then
  local due = redis.call('ZRANGEBYSCORE', H, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[7]))
  for _, wf in ipairs(due) do redis.call('ZADD', H, NOW + tonumber(ARGV[6]), wf) end
  return due
end

local ROOT = 'r'
local SENT = H .. ':sent'
local INFLIGHT = H .. ':inflight'
local TERMINAL = { done = true, failed = true, canceled = true, skipped = true }
local HOLDING = { suspended = true, interrupted = true }

local DELAYED = H .. ':delayed'
local CONTS = H .. ':conts'
local CANCELED = '{"type":"Canceled","message":"canceled by an operator"}'
local pubs = {}     -- specs to publish: [task, sid, payload(, priority, not-before ms)]
local wake_at = nil -- earliest time this call made a node wait for (the live index must know)
local sent_now = {} -- sids this call dispatched
local events = {}   -- observer events
local touched = {}  -- auxiliary keys written, whose TTL is refreshed at the end
local defs = {}     -- decoded definitions, at most one decode per sid per call
local filling = {}  -- swarms whose fill loop is running (re-entry returns at once)

-- Fields read in this call, so each is fetched from Redis at most once; every write to a
-- state field goes through set/del/incr, which keep it current (false = absent).
local fields = {}

local function get(sid, f)
  local k = sid .. ':' .. f
  local v = fields[k]
  if v == nil then
    v = redis.call('HGET', H, k)
    fields[k] = v
  end
  if v == false then return nil end
  return v
end

-- Streamed events (H:events, read by wf.events()): one compact entry per state change,
-- JSON [sid, event, kind, task name, ms, attempt, status]; a call's changes go in one
-- stream entry (a JSON array of them), appended at the end of the call.
local EVENTS = H .. ':events'
local EVENTS_MAX = 10000 -- entries (transitions) kept per workflow (XADD MAXLEN ~)
local stream = {}
local STATUS_EVENT = { done = 'done', failed = 'failed', canceled = 'canceled',
  suspended = 'suspended', interrupted = 'interrupted', skipped = 'skipped' }
local def
local names_json = {} -- task name -> its JSON text (names are plain text as a rule)
local function name_json(t)
  local j = names_json[t]
  if j == nil then
    if string.find(t, '[%c"\\]') then j = cjson.encode(t) else j = '"' .. t .. '"' end
    names_json[t] = j
  end
  return j
end
local function note(sid, event, attempt, status)
  local d = def(sid)
  -- sids, event names, kinds and statuses are plain identifiers: concatenated as JSON
  stream[#stream + 1] = '["' .. sid .. '","' .. event .. '","' .. (d and d.k or 'task') .. '",'
    .. name_json(d and d.t or '') .. ',' .. NOW_S .. ',' .. (attempt or 0) .. ',"'
    .. (status or 'active') .. '"]'
end

-- The event of sid's status going from old to v (nil: no change worth streaming).
local function status_event(old, v)
  if old == v then return nil end
  local held = old == 'suspended' or old == 'interrupted'
  if v == 'active' then return held and 'resumed' or 'started' end
  if v == 'pending' then return held and 'resumed' or 'requeued' end
  return STATUS_EVENT[v] or v
end

local function set(sid, f, v)
  local k = sid .. ':' .. f
  if type(v) == 'number' then v = string.format('%d', v) end
  if f == 'status' then
    local ev = status_event(get(sid, f), v)
    if ev then note(sid, ev, 0, v) end
  end
  redis.call('HSET', H, k, v)
  fields[k] = v
end

local function del(sid, f)
  local k = sid .. ':' .. f
  redis.call('HDEL', H, k)
  fields[k] = false
end

local function incr(sid, f, by)
  local n = redis.call('HINCRBY', H, sid .. ':' .. f, by)
  fields[sid .. ':' .. f] = string.format('%d', n)
  return n
end

-- The definition of sid, or nil when there is none (definitions never change).
def = function(sid)
  local d = defs[sid]
  if d == nil then
    local raw = redis.call('HGET', H, sid)
    if raw == false then return nil end
    d = cjson.decode(raw)
    defs[sid] = d
  end
  return d
end

-- The name of an auxiliary key of this workflow, remembered for the TTL refresh.
local function aux(kind, sid)
  local k = H .. ':' .. kind .. ':' .. sid
  touched[k] = true
  return k
end

-- STATISTICS (optional KEYS[2]): per-minute bucket hashes "<KEYS[2]>:<minute>", each
-- expiring STATS_TTL after its minute, fields "t:<task>:<counter>" (started, retried,
-- done, failed, ms = summed duration, h<i> = durations <= STATS_BOUNDS[i] ms, h0 = more)
-- and "w:<status>" for roots (started, done, failed, canceled). O(1) per event, memory
-- bounded by the minutes kept x the task names. The buckets are cross-workflow keys in
-- another Cluster slot than H: the client passes KEYS[2] only where one script may touch
-- both (a single Redis, the in-process store).
local STATS = KEYS[2]
local STATS_TTL = 3660
local STATS_BOUNDS = { 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000 }

local stats_bucket = nil -- this minute's bucket, once written (its TTL is set at the end)

local function stat(field, by)
  if not STATS then return end
  stats_bucket = stats_bucket or (STATS .. ':' .. string.format('%d', math.floor(NOW / 60000)))
  redis.call('HINCRBY', stats_bucket, field, by)
end

-- Task sid's final outcome: counted with its duration since its first attempt.
local function stat_finished(sid, ok)
  if not STATS then return end
  local t = 't:' .. def(sid).t .. ':'
  stat(t .. (ok and 'done' or 'failed'), 1)
  local ms = NOW - tonumber(get(sid, 'started') or NOW_S)
  stat(t .. 'ms', ms)
  local b = 0
  for i, bound in ipairs(STATS_BOUNDS) do
    if ms <= bound then b = i break end
  end
  stat(t .. 'h' .. b, 1)
end

-- A swarm item that holds its slot without running (a task held by a suspend or an
-- interrupt, or an item that ended under a held swarm and waits to be counted) is
-- 'paused' and counted in its swarm's n_paused, so the swarm's running count
-- (n_running - n_paused) stays true while it is held.
local function pause(sid)
  local p = def(sid).p
  if p and def(p).k == 'swarm' and not get(sid, 'paused') then
    set(sid, 'paused', '1')
    incr(p, 'n_paused', 1)
  end
end

local function unpause(sid)
  if get(sid, 'paused') then
    del(sid, 'paused')
    local p = def(sid).p
    if tonumber(get(p, 'n_paused') or '0') > 0 then incr(p, 'n_paused', -1) end
  end
end

local function up(d)
  return d.p or d.of
end

-- The sid of chain c's step i (0-based), or nil past the end.
local function step_at(c, i)
  local s = redis.call('LINDEX', H .. ':steps:' .. c, i)
  if s == false then return nil end
  return s
end

local function is_item(d)
  if not d.p then return false end
  local pd = def(d.p)
  return pd ~= nil and pd.k == 'swarm'
end

local function join(a, b)
  if a == nil or a == '' then return b or '' end
  if b == nil or b == '' then return a end
  return a .. ',' .. b
end

-- A JSON array of plain strings (cjson encodes an empty table as {}).
local function string_list(t)
  local parts = {}
  for i, s in ipairs(t) do parts[i] = cjson.encode(s) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- The payload a task receives: inherited messages, own message, previous result, error.
local function payload(inl, own, ret, err)
  local parts = { '"in":[' .. (inl or '') .. ']' }
  if own then parts[#parts + 1] = '"own":' .. own end
  if ret then parts[#parts + 1] = '"ret":' .. ret end
  if err then parts[#parts + 1] = '"err":' .. err end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- A swarm item's payload is rebuilt from its swarm, so nothing of the swarm is copied
-- per item; any other task's payload is what emit stored.
local function payload_of(sid)
  local d = def(sid)
  if is_item(d) then
    return payload(get(d.p, 'input'), get(sid, 'own'), get(d.p, 'input_ret'), get(d.p, 'input_err'))
  end
  return get(sid, 'payload') or payload('', nil, nil, nil)
end

-- When node sid may start (ms), or nil when it may start now. dl counts from the first
-- time the node became due; that time is kept, so a re-dispatch does not wait again.
local function not_before(sid)
  local d = def(sid)
  if d.dl == nil and d.at == nil then return nil end
  local due = tonumber(get(sid, 'due') or '')
  if due == nil then
    due = d.at or (NOW + d.dl)
    set(sid, 'due', due)
  end
  if due <= NOW then return nil end
  return due
end

local function spec(sid, pl)
  local d = def(sid)
  local s = '[' .. cjson.encode(d.t) .. ',' .. cjson.encode(sid) .. ',' .. pl
  local due = d.nd and not_before(sid)
  if d.pr or due or d.q then
    s = s .. ',' .. (d.pr and tostring(d.pr) or 'null') .. ',' .. (due and string.format('%d', due) or 'null')
  end
  if d.q then s = s .. ',' .. cjson.encode(d.q) end
  return s .. ']'
end

-- The nearest node from sid upwards that is canceled or holds, and why.
local function blocker(sid)
  local cur = sid
  while cur do
    local st = get(cur, 'status')
    if st == 'canceled' then return 'canceled', cur end
    if HOLDING[st] then return 'hold', cur end
    local d = def(cur)
    cur = d and up(d)
  end
  return nil, nil
end

-- Remember entry until node `at` resumes.
local function hold(at, entry)
  redis.call('RPUSH', aux('held', at), cjson.encode(entry))
end

-- Publish task sid now, recorded so the reconciler can re-send it until it starts (a task
-- the task manager delays: until that long after its time).
local function dispatch(sid, pl)
  pubs[#pubs + 1] = spec(sid, pl)
  sent_now[#sent_now + 1] = sid
  local due = def(sid).nd and not_before(sid)
  redis.call('ZADD', SENT, (due or NOW) + RESEND_AFTER, sid)
  touched[SENT] = true
end

-- Hold node sid's start until `due`; the reconciler's pass releases it (release_due). A
-- task keeps its payload as emit would (a swarm item's is rebuilt: nothing copied).
local function defer(sid, due, inl, own, ret, err)
  local d = def(sid)
  if d.k ~= 'task' then
    set(sid, 'deferred', cjson.encode({ inl or '', own or '', ret or '', err or '' }))
  elseif not is_item(d) then
    set(sid, 'payload', payload(inl, own, ret, err))
  end
  redis.call('ZADD', DELAYED, due, sid)
  touched[DELAYED] = true
  if wake_at == nil or due < wake_at then wake_at = due end
end

-- The context every node directly under sid's nearest composite ancestor receives.
local function context_above(sid)
  local u = up(def(sid))
  while u do
    local ud = def(u)
    if ud.k ~= 'task' then return get(u, 'context') end
    u = up(ud)
  end
  return nil
end

-- Task sid is due with payload pl: dispatch it, hold it, or drop it (canceled workflow).
local function emit(sid, pl)
  if not is_item(def(sid)) then set(sid, 'payload', pl) end
  local why, at = blocker(sid)
  if why == 'canceled' then return end
  if why == 'hold' then
    hold(at, { 'pub', sid })
    return
  end
  dispatch(sid, pl)
end

-- Mark a composite active; a held one keeps showing its hold and resumes as active.
local function activate(sid)
  if HOLDING[get(sid, 'status')] then
    set(sid, 'held_from', 'active')
  else
    set(sid, 'status', 'active')
  end
end

local start_node, settle, after, fill, rerun, rearm, continuation_done
local graph_start, graph_node_done, graph_maybe_complete, start_graph_node, branch_child_done

local PRIORITY_MAX = 9
local SEQ_SPAN = 1099511627776 -- 2^40 queue positions per priority: scores stay exact

-- Put item `it` on swarm s's queue: higher priority first, FIFO within a priority.
local function enqueue(s, it)
  local seq = incr(s, 'qseq', 1)
  local pr = def(it).pr or 0
  local score = string.format('%.0f', (PRIORITY_MAX - pr) * SEQ_SPAN + seq)
  redis.call('ZADD', aux('queue', s), score, it)
end

-- The next queued item of swarm s, or nil.
local function dequeue(s)
  local popped = redis.call('ZPOPMIN', aux('queue', s))
  return popped[1]
end

-- Put the swarm's items that were never queued on its queue, in item order.
local function queue_unqueued(s)
  local items = redis.call('LRANGE', aux('items', s), tonumber(get(s, 'scanned') or '0'), -1)
  for _, it in ipairs(items) do
    if not get(it, 'queued') then
      set(it, 'queued', '1')
      enqueue(s, it)
    end
  end
  set(s, 'scanned', redis.call('LLEN', aux('items', s)))
end

-- Settle a closed, started swarm once every item ended: results in item order.
local function maybe_complete(s)
  if def(s).k == 'graph' then return graph_maybe_complete(s) end
  if get(s, 'closed') ~= '1' or get(s, 'sent') == nil then return end
  if TERMINAL[get(s, 'status')] or get(s, 'outcome') then return end
  local n = redis.call('LLEN', aux('items', s))
  if tonumber(get(s, 'n_ended') or '0') < n then return end
  local items = redis.call('LRANGE', aux('items', s), 0, -1)
  local out = {}
  for i, it in ipairs(items) do
    if get(it, 'status') == 'done' then
      out[i] = get(it, 'result') or 'null'
    else
      out[i] = '{"mageflow_error":' .. (get(it, 'error') or 'null') .. '}'
    end
  end
  settle(s, true, '[' .. table.concat(out, ',') .. ']', nil)
end

-- Start queued items while the swarm has free slots (held or canceled: nothing starts).
fill = function(s)
  if filling[s] then return end
  if TERMINAL[get(s, 'status')] or get(s, 'sent') == nil then return end
  local why, at = blocker(s)
  if why == 'canceled' then return end
  if why == 'hold' then
    hold(at, { 'fill', s })
    return
  end
  local d = def(s)
  filling[s] = true
  while not TERMINAL[get(s, 'status')] do
    if d.mc ~= nil and tonumber(get(s, 'n_running') or '0') >= d.mc then break end
    local it = dequeue(s)
    if not it then break end
    incr(s, 'n_running', 1)
    redis.call('SADD', aux('running', s), it)
    if d.k == 'graph' then
      start_graph_node(s, it)
    else
      start_node(it, get(s, 'input'), get(it, 'own'), get(s, 'input_ret'), get(s, 'input_err'))
    end
  end
  filling[s] = nil
end

-- Start node sid with inherited messages inl, own message, previous result / error
-- (held until its time when it has a delay the task manager does not hold).
start_node = function(sid, inl, own, ret, err)
  local d = def(sid)
  if get(sid, 'status') == 'canceled' then -- canceled before it started: its parent reacts
    after(sid, inl)
    return
  end
  set(sid, 'sent', NOW_S)
  if not d.nd then
    local due = not_before(sid)
    if due then
      defer(sid, due, inl, own, ret, err)
      return
    end
  end
  if (d.k ~= 'task' or d.p) and get(sid, 'rerun') then -- a retried item: resume, not restart
    del(sid, 'rerun')
    rerun(sid)
    return
  end
  if d.k == 'task' then
    emit(sid, payload(inl, own, ret, err))
    return
  end
  local kw = get(sid, 'kwargs')
  local context = join(context_above(sid), kw)
  if context ~= '' then set(sid, 'context', context) end
  local input = join(join(inl, kw), own)
  activate(sid)
  set(sid, 'started', NOW_S)
  set(sid, 'input', input)
  if ret then set(sid, 'input_ret', ret) end
  if err then set(sid, 'input_err', err) end
  if d.k == 'chain' then
    touched[H .. ':steps:' .. sid] = true
    set(sid, 'step', 0)
    local first = step_at(sid, 0)
    if first == nil then
      settle(sid, true, ret or 'null', nil)
    else
      start_node(first, input, nil, ret, err)
    end
  elseif d.k == 'graph' then
    graph_start(sid)
  elseif d.k == 'branch' then
    start_node(d.sl, input, nil, ret, err)
  else
    queue_unqueued(sid)
    fill(sid)
    maybe_complete(sid)
  end
end

-- Chain c reacts to its step sid ending: next step, or the chain settles.
local function chain_step_done(c, sid, ok, val)
  touched[H .. ':steps:' .. c] = true
  if TERMINAL[get(c, 'status')] or get(c, 'outcome') then return end
  local cur = tonumber(get(c, 'step') or '0')
  if step_at(c, cur) ~= sid then return end
  local nxt = ok and step_at(c, cur + 1)
  if not ok then
    settle(c, false, val, get(c, 'input'))
  elseif nxt then
    set(c, 'step', cur + 1)
    events[#events + 1] = cjson.encode({ 'advanced', c, nxt })
    start_node(nxt, get(c, 'context'), nil, val, nil)
  else
    settle(c, true, val, nil)
  end
end

local function error_summary(val)
  local decoded, e = pcall(cjson.decode, val)
  if decoded and type(e) == 'table' then
    return tostring(e.type) .. ': ' .. tostring(e.message)
  end
  return tostring(val)
end

-- Swarm s reacts to item sid ending: free its slot, count it, fail on the budget, refill.
local function swarm_item_done(s, sid, ok, val)
  if redis.call('SREM', aux('running', s), sid) == 1 then incr(s, 'n_running', -1) end
  incr(s, 'n_ended', 1)
  events[#events + 1] = cjson.encode({ 'item', s, sid, ok and 'done' or 'failed' })
  local nf = tonumber(get(s, 'n_failed') or '0')
  if not ok then nf = incr(s, 'n_failed', 1) end
  if TERMINAL[get(s, 'status')] or get(s, 'outcome') then return end
  local d = def(s)
  if not ok and d.sa ~= nil and nf >= d.sa then
    redis.call('DEL', aux('queue', s))
    local msg = string.format('%d item(s) failed (stop_after_n_failures=%d); last: %s',
      nf, d.sa, error_summary(val))
    settle(s, false, cjson.encode({ type = 'SwarmFailed', message = msg }), get(s, 'input'))
    return
  end
  fill(s)
  maybe_complete(s)
end

-- Node sid ended (ok: val is its result; else its error, inl the input it failed on).
-- Held itself: only the outcome is recorded. Under a held ancestor: it ends, what
-- follows waits. Canceled workflow: it ends, nothing follows.
settle = function(sid, ok, val, inl)
  if ok then set(sid, 'result', val) else set(sid, 'error', val) end
  local why, at = blocker(sid)
  if why == 'hold' and at == sid then
    set(sid, 'outcome', ok and 'done' or 'failed')
    hold(sid, { 'settle', sid, inl or '' })
    return
  end
  local d = def(sid)
  set(sid, 'status', ok and 'done' or 'failed')
  set(sid, 'ended', NOW_S)
  if sid == ROOT then stat(ok and 'w:done' or 'w:failed', 1) end
  events[#events + 1] = cjson.encode({ ok and 'done' or 'failed', sid, d.k, get(sid, 'started') or NOW_S })
  if get(sid, 'waited') then redis.call('PUBLISH', H .. ':done', sid) end
  if why == 'canceled' then return end
  if why == 'hold' then
    pause(sid)
    hold(at, { 'after', sid, inl or '' })
    return
  end
  after(sid, inl)
end

-- Task t's returned workflow settled: t settles with its outcome (t's callbacks, then
-- t's parent). A failure is reported on the input t ran with.
continuation_done = function(t, ok, val)
  if TERMINAL[get(t, 'status')] or get(t, 'outcome') then return end
  settle(t, ok, val, get(t, 'input'))
end

-- What follows an ended node: its callbacks, then its parent's advancement.
after = function(sid, inl)
  local d = def(sid)
  local ok = get(sid, 'status') == 'done'
  local val
  if ok then
    val = get(sid, 'result') or 'null'
    for _, cb in ipairs(d.ok or {}) do start_node(cb, context_above(cb), nil, val, nil) end
  else
    val = get(sid, 'error') or 'null'
    if get(sid, 'status') ~= 'canceled' then -- a canceled node's own callbacks never fire
      for _, cb in ipairs(d.err or {}) do start_node(cb, inl, nil, nil, val) end
    end
  end
  if d.p then
    local pk = def(d.p).k
    if pk == 'chain' then
      chain_step_done(d.p, sid, ok, val)
    elseif pk == 'task' then
      continuation_done(d.p, ok, val)
    elseif pk == 'graph' then
      graph_node_done(d.p, sid, ok, val)
    elseif pk == 'branch' then
      branch_child_done(d.p, sid, ok, val)
    else
      swarm_item_done(d.p, sid, ok, val)
    end
  end
end

-- Graphs. A graph's nodes are the list H:nodes:<graph>; a node knows its in-edges (rq
-- required, oq optional dependency sids) and its out-edges (rd dependents that require it,
-- od dependents for which it is optional); its state field `n_deps` counts the
-- dependencies not finished yet. A finished node touches its out-edges only: O(1) per
-- node apart from them, never a scan of the graph. Ready nodes wait on H:queue:<graph>
-- (priority order, as swarm items) and hold a slot in H:running:<graph> while they run.

-- The outcome of finished node x as a dependency / sink value: its result, or
-- {"mageflow_error": its error} when it failed or was skipped.
local function outcome_value(x)
  if get(x, 'status') == 'done' then return get(x, 'result') or 'null' end
  return '{"mageflow_error":' .. (get(x, 'error') or 'null') .. '}'
end

-- A JSON object of the outcomes of nodes xs, keyed by their names in the graph.
local function keyed_outcomes(xs)
  local parts = {}
  for _, x in ipairs(xs) do
    parts[#parts + 1] = cjson.encode(def(x).gn) .. ':' .. outcome_value(x)
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function dependencies(d)
  local all = {}
  for _, x in ipairs(d.rq or {}) do all[#all + 1] = x end
  for _, x in ipairs(d.oq or {}) do all[#all + 1] = x end
  return all
end

-- Graph g's ready node x takes its slot: the graph's messages, and as the previous result
-- its dependencies' outcomes keyed by name (a node without dependencies: what the graph
-- itself was started with).
start_graph_node = function(g, x)
  local deps = dependencies(def(x))
  if #deps > 0 then
    start_node(x, get(g, 'input'), nil, keyed_outcomes(deps), nil)
  else
    start_node(x, get(g, 'input'), nil, get(g, 'input_ret'), get(g, 'input_err'))
  end
end

-- Node x of graph g is ready: on the queue, once.
local function ready(g, x)
  local st = get(x, 'status')
  -- a node canceled before it started is queued too: it counts when it would start
  if (st == 'pending' or st == 'canceled') and not get(x, 'queued') then
    set(x, 'queued', '1')
    enqueue(g, x)
  end
end

-- One more dependency of node x finished.
local function release(g, x)
  if incr(x, 'n_deps', -1) <= 0 then ready(g, x) end
end

-- Node x never runs: skipped, with why (its callbacks do not fire).
local function skip(x, why)
  set(x, 'status', 'skipped')
  set(x, 'error', cjson.encode({ type = 'Skipped', message = why }))
  set(x, 'ended', NOW_S)
  events[#events + 1] = cjson.encode({ 'skipped', x, def(x).k, NOW_S })
  if get(x, 'waited') then redis.call('PUBLISH', H .. ':done', x) end
end

-- Node failed of graph g did not succeed: every node that requires it (transitively) is
-- skipped; the optional dependents of a skipped node count it as finished.
-- O(the skipped subgraph and its out-edges).
local function skip_dependents(g, failed)
  local stack = { failed }
  while #stack > 0 do
    local cur = table.remove(stack)
    local d = def(cur)
    for _, y in ipairs(d.rd or {}) do
      if get(y, 'status') == 'pending' and not get(y, 'queued') then
        skip(y, 'required dependency ' .. cjson.encode(d.gn) .. ' did not succeed')
        incr(g, 'n_ended', 1)
        stack[#stack + 1] = y
      end
    end
    if cur ~= failed then
      for _, y in ipairs(d.od or {}) do release(g, y) end
    end
  end
end

-- Graph g starts: its sources (nodes without dependencies) are ready.
graph_start = function(g)
  for _, x in ipairs(redis.call('LRANGE', aux('sources', g), 0, -1)) do ready(g, x) end
  fill(g)
  graph_maybe_complete(g)
end

-- Settle a started graph once every node ended: the sink outcomes keyed by name.
graph_maybe_complete = function(g)
  if get(g, 'sent') == nil or TERMINAL[get(g, 'status')] or get(g, 'outcome') then return end
  if tonumber(get(g, 'n_ended') or '0') < redis.call('LLEN', aux('nodes', g)) then return end
  settle(g, true, keyed_outcomes(redis.call('LRANGE', aux('sinks', g), 0, -1)), nil)
end

-- Graph g reacts to node sid ending: free its slot, skip what required it, count a
-- failure nobody tolerates against the budget, release the dependents, refill.
graph_node_done = function(g, sid, ok, val)
  if redis.call('SREM', aux('running', g), sid) == 1 then incr(g, 'n_running', -1) end
  incr(g, 'n_ended', 1)
  if TERMINAL[get(g, 'status')] or get(g, 'outcome') then return end
  local d, gd = def(sid), def(g)
  if not ok then
    skip_dependents(g, sid)
    -- tolerated: it has dependents and every one of them declared it optional
    local tolerated = d.od ~= nil and #d.od > 0 and (d.rd == nil or #d.rd == 0)
    if not tolerated then
      local nf = incr(g, 'n_failed', 1)
      if gd.sa ~= nil and nf >= gd.sa then
        redis.call('DEL', aux('queue', g))
        local msg = string.format('%d node(s) failed (stop_after_n_failures=%d); last: %s: %s',
          nf, gd.sa, tostring(d.gn), error_summary(val))
        settle(g, false, cjson.encode({ type = 'GraphFailed', message = msg }), get(g, 'input'))
        return
      end
    end
  else
    for _, y in ipairs(d.rd or {}) do release(g, y) end
  end
  for _, y in ipairs(d.od or {}) do release(g, y) end
  fill(g)
  graph_maybe_complete(g)
end

-- Branches. A branch runs its selector (sl); the selector's result names the case (cs:
-- case key -> sid, df: the default) that runs next, recorded in `chosen`; the others end
-- skipped. The branch's result is the chosen case's.

-- Every child of branch definition d: the selector, the cases, the default.
local function branch_children(d)
  local kids = { d.sl }
  for _, x in pairs(d.cs or {}) do kids[#kids + 1] = x end
  if d.df then kids[#kids + 1] = d.df end
  table.sort(kids)
  return kids
end

-- The case key a selector result names: a JSON string's text, else the JSON text itself.
local function case_key(val)
  if string.sub(val, 1, 1) == '"' then
    local decoded, s = pcall(cjson.decode, val)
    if decoded and type(s) == 'string' then return s end
  end
  return val
end

branch_child_done = function(b, sid, ok, val)
  if TERMINAL[get(b, 'status')] or get(b, 'outcome') then return end
  local d = def(b)
  if sid ~= d.sl then
    if sid == get(b, 'chosen') then settle(b, ok, val, get(b, 'input')) end
    return
  end
  local pick = ok and ((d.cs or {})[case_key(val)] or d.df) or nil
  for _, x in ipairs(branch_children(d)) do
    if x ~= d.sl and x ~= pick and get(x, 'status') == 'pending' then
      skip(x, ok and 'another case was chosen' or 'the selector failed')
    end
  end
  if not ok then
    settle(b, false, val, get(b, 'input'))
  elseif pick == nil then
    local msg = 'the selector returned ' .. val .. ', which names no case, and there is no default'
    settle(b, false, cjson.encode({ type = 'NoBranchMatched', message = msg }), get(b, 'input'))
  else
    set(b, 'chosen', pick)
    start_node(pick, get(b, 'input'), nil, val, nil)
  end
end

-- A canceled workflow's swarms under sid (as far as they started) queue and run nothing:
-- their queues and running sets go, so their counts show what is left.
local function drop_queues(sid)
  local d = def(sid)
  if d.k == 'chain' then
    if get(sid, 'sent') and not TERMINAL[get(sid, 'status')] then
      local cur = step_at(sid, tonumber(get(sid, 'step') or '0'))
      if cur then drop_queues(cur) end
    end
  elseif d.k == 'swarm' or d.k == 'graph' then
    for _, it in ipairs(redis.call('SMEMBERS', aux('running', sid))) do drop_queues(it) end
    redis.call('DEL', aux('queue', sid), aux('running', sid))
    if get(sid, 'n_running') then set(sid, 'n_running', 0) end
    if get(sid, 'n_paused') then set(sid, 'n_paused', 0) end
  elseif d.k == 'branch' then
    local chosen = get(sid, 'chosen')
    if chosen then drop_queues(chosen) end
  else
    local c = get(sid, 'cont')
    if c then drop_queues(c) end
  end
end

-- Running tasks under sid go back to pending, held on `holder`; their run ids go to out.
local function take_running(sid, holder, out)
  local d = def(sid)
  local c = d.k == 'task' and get(sid, 'cont')
  if c then
    if not TERMINAL[get(sid, 'status')] then take_running(c, holder, out) end
  elseif d.k == 'task' then
    local st = get(sid, 'status')
    local self_held = HOLDING[st] and get(sid, 'held_from') == 'active'
    if st == 'active' or self_held then
      out[#out + 1] = get(sid, 'run_id') or ''
      if self_held then set(sid, 'held_from', 'pending') else set(sid, 'status', 'pending') end
      del(sid, 'run_id')
      redis.call('SREM', INFLIGHT, sid)
      pause(sid)
      hold(holder, { 'pub', sid })
    end
  elseif d.k == 'chain' then
    if get(sid, 'sent') and not TERMINAL[get(sid, 'status')] then
      local cur = step_at(sid, tonumber(get(sid, 'step') or '0'))
      if cur then take_running(cur, holder, out) end
    end
  elseif d.k == 'branch' then
    if get(sid, 'sent') and not TERMINAL[get(sid, 'status')] then
      take_running(get(sid, 'chosen') or d.sl, holder, out)
    end
  else
    for _, it in ipairs(redis.call('SMEMBERS', aux('running', sid))) do
      take_running(it, holder, out)
    end
  end
end

-- Re-send task sid if it was dispatched and never started; later re-sends back off.
local function resend(sid)
  local d = def(sid)
  local st = d and get(sid, 'status')
  if d == nil or d.k ~= 'task' or TERMINAL[st] or get(sid, 'outcome') or get(sid, 'run_id')
      or get(sid, 'sent') == nil then
    redis.call('ZREM', SENT, sid)
    return
  end
  local why, at = blocker(sid)
  if why == 'canceled' then
    redis.call('ZREM', SENT, sid)
  elseif why == 'hold' then
    redis.call('ZREM', SENT, sid)
    hold(at, { 'pub', sid })
  else
    local n = incr(sid, 'resends', 1)
    redis.call('ZADD', SENT, NOW + RESEND_AFTER * math.pow(2, math.min(n, 6)), sid)
    touched[SENT] = true
    pubs[#pubs + 1] = spec(sid, payload_of(sid))
  end
end

-- What a finished task's redelivery re-issues: its dispatches that never started.
local function redo(sid)
  local owed = get(sid, 'owed')
  if owed then
    for _, x in ipairs(cjson.decode(owed)) do
      if redis.call('ZSCORE', SENT, x) ~= false then resend(x) end
    end
  end
  return '[' .. table.concat(pubs, ',') .. ']'
end

local function encoded_pubs()
  return '[' .. table.concat(pubs, ',') .. ']'
end

local function encoded_events()
  return '[' .. table.concat(events, ',') .. ']'
end

-- A transition's reply: what to publish, what happened, and when to look again.
local function transition_reply()
  return { 'ok', encoded_pubs(), encoded_events(), wake_at and string.format('%d', wake_at) or '' }
end

-- Start up to `limit` delayed nodes whose time has come.
local function release_due(limit)
  for _, x in ipairs(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', DELAYED, x)
    local st = get(x, 'status')
    if def(x).k == 'task' then
      if not TERMINAL[st] and not get(x, 'outcome') and not get(x, 'run_id') then
        emit(x, payload_of(x))
      end
    else
      local a = cjson.decode(get(x, 'deferred') or '["","","",""]')
      del(x, 'deferred')
      if not TERMINAL[st] and blocker(x) ~= 'canceled' then
        local function opt(v) if v == '' then return nil end return v end
        start_node(x, a[1], opt(a[2]), opt(a[3]), opt(a[4]))
      end
    end
  end
end

-- Retry. A failed root runs again from its failure points: along failed nodes a task is
-- dispatched again with its payload, a chain resumes at its failed step, a swarm queues its
-- failed items and those its failure budget stopped. Done nodes keep their results.

-- Clear state fields fs of node sid, in one HDEL.
local function del_fields(sid, fs)
  local ks = {}
  for i, f in ipairs(fs) do
    ks[i] = sid .. ':' .. f
    fields[ks[i]] = false
  end
  redis.call('HDEL', H, unpack(ks))
end

local OUTCOME_FIELDS = { 'result', 'error', 'outcome', 'ended', 'run_id', 'owed', 'resends' }
local RUN_FIELDS = { 'held_from', 'sent', 'queued', 'qseq', 'started', 'ended', 'input',
  'input_ret', 'input_err', 'step', 'scanned', 'n_running', 'n_ended', 'n_failed', 'result',
  'error', 'outcome', 'run_id', 'payload', 'owed', 'resends', 'rerun', 'context', 'due',
  'deferred', 'cont' }

-- Callback cb (and everything below it) back to never run, so it fires again. O(nodes
-- that ran); a node that never started has nothing below it that ran.
rearm = function(cb)
  if get(cb, 'sent') == nil and get(cb, 'queued') == nil then return end
  local d = def(cb)
  local c = get(cb, 'cont')
  del_fields(cb, RUN_FIELDS)
  if c then rearm(c) end
  set(cb, 'status', 'pending')
  redis.call('DEL', aux('held', cb))
  if d.k == 'chain' then
    for _, x in ipairs(redis.call('LRANGE', aux('steps', cb), 0, -1)) do rearm(x) end
  elseif d.k == 'swarm' then
    for _, x in ipairs(redis.call('LRANGE', aux('items', cb), 0, -1)) do rearm(x) end
    redis.call('DEL', aux('queue', cb), aux('running', cb))
  elseif d.k == 'graph' then
    for _, x in ipairs(redis.call('LRANGE', aux('nodes', cb), 0, -1)) do
      rearm(x)
      if def(x).rq or def(x).oq then set(x, 'n_deps', #dependencies(def(x))) end
    end
    redis.call('DEL', aux('queue', cb), aux('running', cb))
  elseif d.k == 'branch' then
    del(cb, 'chosen')
    for _, x in ipairs(branch_children(d)) do rearm(x) end
  end
  for _, x in ipairs(d.ok or {}) do rearm(x) end
  for _, x in ipairs(d.err or {}) do rearm(x) end
end

-- Failed node sid may run again: pending, outcome cleared (attempts and the first start
-- stay), its error callbacks re-armed.
local function reopen(sid)
  set(sid, 'status', 'pending')
  del_fields(sid, OUTCOME_FIELDS)
  for _, cb in ipairs(def(sid).err or {}) do rearm(cb) end
end

-- Failed node x of a swarm or graph will be queued again: a task starts afresh from the
-- queue (no 'sent': a stale copy of its failed run is dropped); a composite resumes from
-- its failure point once it has a slot.
local function reopen_queued(x)
  reopen(x)
  if def(x).k == 'task' and not get(x, 'cont') then del(x, 'sent') else set(x, 'rerun', '1') end
end

-- Failed swarm s queues again its failed items and the queued ones that never started
-- (the failure budget emptied the queue); counters then count the done items only.
-- O(items): retry is an operator's command, never a per-event op.
local function requeue(s)
  local ended = 0
  for _, it in ipairs(redis.call('LRANGE', aux('items', s), 0, -1)) do
    local st = get(it, 'status')
    if st == 'done' then
      ended = ended + 1
    elseif st == 'failed' then
      reopen_queued(it)
      enqueue(s, it)
    elseif st == 'canceled' then -- an operator canceled it: it runs again from the start
      rearm(it)
      set(it, 'status', 'pending')
      set(it, 'queued', '1')
      enqueue(s, it)
    elseif get(it, 'queued') and get(it, 'sent') == nil then
      enqueue(s, it)
    end
  end
  set(s, 'n_ended', ended)
  set(s, 'n_failed', 0)
  if get(s, 'closed') == '1' then queue_unqueued(s) end
end

-- Canceled node sid (a chain step, a branch's selector or case, a returned workflow; a
-- swarm item or graph node is queued again by its parent's retry) back to never run,
-- started again with what its parent gives it.
local function restart(sid)
  local d = def(sid)
  rearm(sid)
  set(sid, 'status', 'pending')
  local pd = d.p and def(d.p)
  if pd == nil then return end
  if pd.k == 'chain' then
    local cur = tonumber(get(d.p, 'step') or '0')
    if cur == 0 then
      start_node(sid, get(d.p, 'input'), nil, get(d.p, 'input_ret'), get(d.p, 'input_err'))
    else
      start_node(sid, get(d.p, 'context'), nil, get(step_at(d.p, cur - 1), 'result'), nil)
    end
  elseif pd.k == 'task' then
    start_node(sid, context_above(sid), nil, nil, nil)
  elseif pd.k == 'branch' and sid == pd.sl then
    start_node(sid, get(d.p, 'input'), nil, get(d.p, 'input_ret'), get(d.p, 'input_err'))
  elseif pd.k == 'branch' then
    start_node(sid, get(d.p, 'input'), nil, get(pd.sl, 'result'), nil)
  end -- a graph node is queued again by graph_requeue
end

-- Failed graph g runs again: failed nodes re-run from their failure points, skipped ones
-- wait again, pending counters are recounted (dependencies not done) and the ready nodes
-- queued. O(nodes + edges): retry is an operator's command, never a per-event op.
local function graph_requeue(g)
  local nodes = redis.call('LRANGE', aux('nodes', g), 0, -1)
  redis.call('DEL', aux('queue', g))
  local ended = 0
  for _, x in ipairs(nodes) do
    local st = get(x, 'status')
    if st == 'done' then
      ended = ended + 1
    elseif st == 'failed' then
      reopen_queued(x)
      del(x, 'queued')
    elseif st == 'skipped' then
      set(x, 'status', 'pending')
      del_fields(x, { 'error', 'ended', 'queued' })
    elseif st == 'canceled' then -- an operator canceled it: it runs again from the start
      rearm(x)
      set(x, 'status', 'pending')
      del(x, 'queued')
    elseif get(x, 'queued') and get(x, 'sent') == nil then
      del(x, 'queued') -- the budget emptied the queue it was on
    end
  end
  for _, x in ipairs(nodes) do
    if get(x, 'status') == 'pending' and (get(x, 'sent') == nil or get(x, 'rerun')) then
      local waiting = 0
      for _, y in ipairs(dependencies(def(x))) do
        if get(y, 'status') ~= 'done' then waiting = waiting + 1 end
      end
      set(x, 'n_deps', waiting)
      if waiting == 0 then ready(g, x) end
    end
  end
  set(g, 'n_ended', ended)
  set(g, 'n_failed', 0)
  set(g, 'n_running', redis.call('SCARD', aux('running', g)))
end

-- Failed branch b runs again: its failed case, or (the selector failed or named no case)
-- the selector, with the cases waiting again.
local function branch_rerun(b)
  local d = def(b)
  local chosen = get(b, 'chosen')
  if chosen then
    rerun(chosen)
    return
  end
  for _, x in ipairs(branch_children(d)) do
    if get(x, 'status') == 'skipped' then
      set(x, 'status', 'pending')
      del_fields(x, { 'error', 'ended' })
    end
  end
  local sst = get(d.sl, 'status')
  if sst == 'failed' or sst == 'canceled' then
    rerun(d.sl)
  else
    reopen(d.sl)
    start_node(d.sl, get(b, 'input'), nil, get(b, 'input_ret'), get(b, 'input_err'))
  end
end

-- Re-run node sid from its failure point (sid failed, or is a composite item marked rerun).
rerun = function(sid)
  local d = def(sid)
  if get(sid, 'status') == 'canceled' then
    restart(sid)
    return
  end
  local c = d.k == 'task' and get(sid, 'cont')
  reopen(sid)
  if c then -- its returned workflow failed: that resumes, the task does not run again
    set(sid, 'status', 'active')
    rerun(c)
  elseif d.k == 'task' then
    set(sid, 'sent', NOW_S)
    emit(sid, payload_of(sid))
  elseif d.k == 'chain' then
    activate(sid)
    touched[H .. ':steps:' .. sid] = true
    rerun(step_at(sid, tonumber(get(sid, 'step') or '0')))
  elseif d.k == 'graph' then
    activate(sid)
    graph_requeue(sid)
    fill(sid)
    graph_maybe_complete(sid)
  elseif d.k == 'branch' then
    activate(sid)
    branch_rerun(sid)
  else -- a swarm (a new composite kind needs its own branch here)
    activate(sid)
    requeue(sid)
    fill(sid)
    maybe_complete(sid)
  end
end

-- Is task x, dispatched or running, part of an error callback of a failed node? Retry
-- would re-arm that callback under it. (Items a stopped swarm let run are not: they
-- keep their slots and count once they end.)
local function in_failed_callback(x)
  if TERMINAL[get(x, 'status')] then return false end
  local d = def(x)
  while d do
    if d.of and get(d.of, 'status') == 'failed' then return true end
    d = up(d) and def(up(d))
  end
  return false
end

-- Any dispatched or running task inside an error callback of a failed node.
-- O(dispatched + running tasks).
local function callbacks_busy()
  for _, x in ipairs(redis.call('ZRANGE', SENT, 0, -1)) do
    if in_failed_callback(x) then return true end
  end
  for _, x in ipairs(redis.call('SMEMBERS', INFLIGHT)) do
    if in_failed_callback(x) then return true end
  end
  for _, x in ipairs(redis.call('ZRANGE', DELAYED, 0, -1)) do
    if in_failed_callback(x) then return true end
  end
  return false
end

-- The root's finishing call gives every key of the workflow the finished TTL, not only
-- those it touched: a nested swarm's lists, the steps of a chain never started, held lists.
-- O(nodes), once per workflow (the swarm's own completion already reads every item).
local root_was_final = TERMINAL[get(ROOT, 'status')] ~= nil

local function expire_everything(ttl)
  for _, k in ipairs({ SENT, INFLIGHT, DELAYED, CONTS }) do redis.call('EXPIRE', k, ttl) end
  local stack = redis.call('SMEMBERS', CONTS)
  stack[#stack + 1] = ROOT
  while #stack > 0 do
    local sid = table.remove(stack)
    redis.call('EXPIRE', H .. ':held:' .. sid, ttl)
    local raw = defs[sid] == nil and redis.call('HGET', H, sid)
    -- a plain task without callbacks has no other keys: not decoded (most swarm items)
    local leaf = raw and string.sub(raw, 1, 11) == '{"k":"task"' and not string.find(raw, '"ok"', 1, true)
      and not string.find(raw, '"err"', 1, true)
    local d = not leaf and def(sid)
    if d then
      local kids = {}
      if d.k == 'chain' then
        redis.call('EXPIRE', H .. ':steps:' .. sid, ttl)
        kids = redis.call('LRANGE', H .. ':steps:' .. sid, 0, -1)
      elseif d.k == 'swarm' then
        for _, kind in ipairs({ 'items', 'queue', 'running' }) do
          redis.call('EXPIRE', H .. ':' .. kind .. ':' .. sid, ttl)
        end
        kids = redis.call('LRANGE', H .. ':items:' .. sid, 0, -1)
      elseif d.k == 'graph' then
        for _, kind in ipairs({ 'nodes', 'sources', 'sinks', 'queue', 'running' }) do
          redis.call('EXPIRE', H .. ':' .. kind .. ':' .. sid, ttl)
        end
        kids = redis.call('LRANGE', H .. ':nodes:' .. sid, 0, -1)
      elseif d.k == 'branch' then
        kids = branch_children(d)
      end
      for _, list in ipairs({ kids, d.ok or {}, d.err or {} }) do
        for _, x in ipairs(list) do stack[#stack + 1] = x end
      end
    end
  end
end

local result

if OP == 'start' then
  -- A delivery of task sid under run rid, as task ARGV[8]: run it, or say why not. A
  -- delivery under another task name than sid's is not this node's: 'mismatch' (its
  -- definition's task name), nothing changes.
  local sid, rid = ARGV[6], ARGV[7]
  local d = def(sid)
  if d == nil or d.k ~= 'task' then
    result = { 'missing' }
  elseif ARGV[8] ~= nil and d.t ~= ARGV[8] then
    result = { 'mismatch', d.t }
  else
    local st = get(sid, 'status')
    local cur = get(sid, 'run_id')
    if st == 'canceled' then
      result = { 'dropped' }
    elseif TERMINAL[st] or get(sid, 'outcome') or get(sid, 'cont') then
      if cur == rid then result = { 'redo', redo(sid) } else result = { 'dup' } end
    elseif cur == rid and (st == 'active' or get(sid, 'held_from') == 'active')
        and tonumber(get(sid, 'lease') or '0') > NOW then
      -- a copy of a run whose attempt still holds its lease: it must not run user code
      result = { 'leased', get(sid, 'lease') }
    elseif cur and cur ~= rid and (st == 'active' or get(sid, 'held_from') == 'active') then
      result = { 'dup' }
    elseif get(sid, 'sent') == nil then
      result = { 'dropped' }
    else
      local was_sent = redis.call('ZREM', SENT, sid) == 1
      local why, at = blocker(sid)
      if why == 'canceled' then
        result = { 'dropped' }
      elseif why == 'hold' then
        if was_sent or cur == rid then
          if cur then
            del(sid, 'run_id')
            redis.call('SREM', INFLIGHT, sid)
            if st == 'active' then set(sid, 'status', 'pending') else set(sid, 'held_from', 'pending') end
          end
          pause(sid)
          hold(at, { 'pub', sid })
          result = { 'held' }
        else
          result = { 'dup' }
        end
      else
        set(sid, 'status', 'active')
        set(sid, 'run_id', rid)
        unpause(sid)
        redis.call('SADD', INFLIGHT, sid)
        touched[INFLIGHT] = true
        if not get(sid, 'started') then set(sid, 'started', NOW_S) end
        local a = incr(sid, 'attempts', 1)
        stat('t:' .. d.t .. ':started', 1)
        if a > 1 then stat('t:' .. d.t .. ':retried', 1) end
        if a > 1 then note(sid, 'retried', a) end
        if ARGV[9] then set(sid, 'lease', NOW + tonumber(ARGV[9])) end
        result = { 'run', get(sid, 'kwargs') or '{}', tostring(a), get(sid, 'idents') or '{}' }
      end
    end
  end
elseif OP == 'finish' then
  -- Task sid ended: ok ('1') with result val, or for good with error val on input inp.
  local sid, ok, val, inp = ARGV[6], ARGV[7] == '1', ARGV[8], ARGV[9]
  local d = def(sid)
  if d == nil or d.k ~= 'task' then
    result = { 'missing' }
  elseif TERMINAL[get(sid, 'status')] or get(sid, 'outcome') or get(sid, 'cont') then
    result = { 'dup', redo(sid) }
  else
    redis.call('SREM', INFLIGHT, sid)
    stat_finished(sid, ok)
    del(sid, 'lease')
    settle(sid, ok, val, inp)
    set(sid, 'owed', string_list(sent_now))
    result = transition_reply()
  end
elseif OP == 'continue' then
  -- Task sid returned a workflow to run in its place: its root c, already stored under
  -- sid (inert until now), starts; sid settles when c does. inp: the input sid ran with.
  local sid, c, inp = ARGV[6], ARGV[7], ARGV[8]
  local d = def(sid)
  local cd = def(c)
  if d == nil or d.k ~= 'task' then
    result = { 'missing' }
  elseif TERMINAL[get(sid, 'status')] or get(sid, 'outcome') or get(sid, 'cont') then
    result = { 'dup', redo(sid) }
  elseif cd == nil or cd.p ~= sid then
    result = { 'missing' }
  else
    redis.call('SREM', INFLIGHT, sid)
    del(sid, 'lease')
    set(sid, 'cont', c)
    set(sid, 'input', inp)
    redis.call('SADD', CONTS, c)
    touched[CONTS] = true
    events[#events + 1] = cjson.encode({ 'continued', sid, c })
    start_node(c, context_above(c), nil, nil, nil)
    set(sid, 'owed', string_list(sent_now))
    result = transition_reply()
  end
elseif OP == 'run' then
  -- A client runs sid with its own message; watch: the client waits for it.
  local sid, own, watch = ARGV[6], ARGV[7], ARGV[8] == '1'
  local d = def(sid)
  if d == nil then
    result = { 'err', 'missing' }
  elseif get(sid, 'sent') or get(sid, 'queued') then
    result = { 'err', 'already_run' }
  elseif d.of then
    result = { 'err', 'callback' }
  else
    if own == '' then own = nil end
    if watch then set(sid, 'waited', '1') end
    local pd = d.p and def(d.p)
    if pd and pd.k == 'swarm' then
      if TERMINAL[get(d.p, 'status')] then
        result = { 'err', 'swarm_finished' }
      else
        if own then set(sid, 'own', own) end
        set(sid, 'queued', '1')
        enqueue(d.p, sid)
        if get(d.p, 'sent') == nil and up(pd) == nil and get(d.p, 'status') ~= 'canceled' then
          stat('w:started', 1)
          start_node(d.p, '', nil, nil, nil) -- a root swarm starts with its first item run
        else
          fill(d.p)
        end
        result = transition_reply()
      end
    elseif pd then
      result = { 'err', pd.k == 'chain' and 'chain_step' or 'inner_node' }
    elseif get(sid, 'status') == 'canceled' then
      result = { 'err', 'finished', 'canceled' }
    else
      stat('w:started', 1)
      start_node(sid, '', own, nil, nil)
      result = transition_reply()
    end
  end
elseif OP == 'add' then
  -- Add m items to open swarm s, in order: ARGV[7] = m, the m item sids; then k and k
  -- (suffix, value) pairs every item gets ("<sid><suffix>" = value: its definition,
  -- status ...); then n and n (field, value) records; then (auxiliary list name, JSON
  -- array of sids) pairs: a moved chain's steps, a moved swarm's items. All written
  -- here, or nothing is (an id already stored, or twice in the batch, refuses it all).
  local s, m = ARGV[6], tonumber(ARGV[7])
  local k_at = 8 + m
  local n_at = k_at + 1 + 2 * tonumber(ARGV[k_at])
  local d = def(s)
  local refused
  if d == nil or d.k ~= 'swarm' then
    refused = 'missing'
  elseif get(s, 'closed') == '1' then
    refused = 'closed'
  elseif TERMINAL[get(s, 'status')] then
    refused = 'swarm_finished'
  else
    local seen = {}
    for i = 8, k_at - 1, 1000 do
      local j_end = math.min(i + 999, k_at - 1)
      local stored = redis.call('HMGET', H, unpack(ARGV, i, j_end))
      for j = i, j_end do
        local it = ARGV[j]
        if seen[it] or stored[j - i + 1] then refused = 'exists' end
        seen[it] = true
      end
      if refused then break end
    end
  end
  if refused then
    result = { 'err', refused }
  else
    local BATCH = 1000 -- arguments per command: unpack has a stack limit
    local args = {}
    for i = 8, k_at - 1 do
      for j = k_at + 1, n_at - 1, 2 do
        args[#args + 1] = ARGV[i] .. ARGV[j]
        args[#args + 1] = ARGV[j + 1]
      end
      if #args >= BATCH then
        redis.call('HSET', H, unpack(args))
        args = {}
      end
    end
    if #args > 0 then redis.call('HSET', H, unpack(args)) end
    local last = n_at + 2 * tonumber(ARGV[n_at])
    for i = n_at + 1, last, BATCH do
      redis.call('HSET', H, unpack(ARGV, i, math.min(i + BATCH - 1, last)))
    end
    for i = last + 1, #ARGV, 2 do
      local members = cjson.decode(ARGV[i + 1])
      local key = H .. ':' .. ARGV[i]
      for j = 1, #members, BATCH do
        redis.call('RPUSH', key, unpack(members, j, math.min(j + BATCH - 1, #members)))
        touched[key] = true
      end
    end
    for i = 8, k_at - 1, BATCH do
      redis.call('RPUSH', aux('items', s), unpack(ARGV, i, math.min(i + BATCH - 1, k_at - 1)))
    end
    result = { 'ok' }
  end
elseif OP == 'close' then
  -- Swarm s takes no more items; it completes once every item ended.
  local s = ARGV[6]
  local d = def(s)
  if d == nil or d.k ~= 'swarm' then
    result = { 'err', 'missing' }
  else
    set(s, 'closed', '1')
    if get(s, 'sent') and not TERMINAL[get(s, 'status')] then
      queue_unqueued(s)
      fill(s)
      maybe_complete(s)
    end
    result = transition_reply()
  end
elseif OP == 'suspend' then
  -- Hold sid (mode suspended|interrupted); interrupt + cancel: running tasks go back.
  local sid, mode, cancel = ARGV[6], ARGV[7], ARGV[8] == '1'
  local st = get(sid, 'status')
  if def(sid) == nil then
    result = { 'err', 'missing' }
  elseif TERMINAL[st] then
    result = { 'err', 'finished', st }
  else
    if not HOLDING[st] then set(sid, 'held_from', st or 'pending') end
    if st ~= 'interrupted' then set(sid, 'status', mode) end
    local rids = {}
    if mode == 'interrupted' and cancel then take_running(sid, sid, rids) end
    result = { 'ok', string_list(rids) }
  end
elseif OP == 'resume' then
  -- Release exactly what sid held, once. Not held: re-send what never started.
  local sid = ARGV[6]
  local st = get(sid, 'status')
  local d = def(sid)
  if d == nil then
    result = { 'err', 'missing' }
  elseif TERMINAL[st] then
    result = { 'err', 'finished', st }
  elseif not HOLDING[st] then
    for _, x in ipairs(redis.call('ZRANGE', SENT, 0, 999)) do resend(x) end
    result = transition_reply()
  else
    set(sid, 'status', get(sid, 'held_from') or 'pending')
    del(sid, 'held_from')
    local held = redis.call('LRANGE', aux('held', sid), 0, -1)
    redis.call('DEL', aux('held', sid))
    for _, raw in ipairs(held) do
      local e = cjson.decode(raw)
      local kind, x = e[1], e[2]
      if kind == 'pub' then
        unpause(x)
        if not TERMINAL[get(x, 'status')] and not get(x, 'outcome') and not get(x, 'run_id') then
          emit(x, payload_of(x))
        end
      elseif kind == 'fill' then
        fill(x)
        maybe_complete(x)
      elseif kind == 'settle' then
        local o = get(x, 'outcome')
        if o then
          del(x, 'outcome')
          local ok = o == 'done'
          settle(x, ok, ok and get(x, 'result') or get(x, 'error'), e[3])
        end
      elseif kind == 'after' then
        local why, at = blocker(def(x).p or def(x).of)
        if why == 'hold' then
          hold(at, e)
        elseif why ~= 'canceled' then
          unpause(x)
          after(x, e[3])
        end
      end
    end
    if d.k == 'swarm' or d.k == 'graph' then
      fill(sid)
      maybe_complete(sid)
    end
    result = transition_reply()
  end
elseif OP == 'cancel' then
  -- Stop root sid for good: nothing more starts, no callback fires.
  local sid = ARGV[6]
  local st = get(sid, 'status')
  local d = def(sid)
  if d == nil then
    result = { 'err', 'missing' }
  elseif TERMINAL[st] then
    result = { 'err', 'finished', st }
  elseif up(d) then
    -- A node inside a workflow: it and what is under it stop; for its parent it failed
    -- with a Canceled error (a chain stops, a swarm counts it against its budget). Its
    -- own callbacks never fire. Not started yet: its parent reacts when it would start.
    local rids = {}
    take_running(sid, sid, rids)
    drop_queues(sid)
    unpause(sid)
    redis.call('DEL', aux('held', sid))
    local reached = get(sid, 'sent') ~= nil
    if d.p and redis.call('ZREM', H .. ':queue:' .. d.p, sid) == 1 then reached = true end
    set(sid, 'status', 'canceled')
    set(sid, 'error', CANCELED)
    set(sid, 'ended', NOW_S)
    events[#events + 1] = cjson.encode({ 'canceled', sid, d.k, get(sid, 'started') or NOW_S })
    if get(sid, 'waited') then redis.call('PUBLISH', H .. ':done', sid) end
    if reached then
      local why, at = blocker(up(d))
      if why == 'hold' then
        hold(at, { 'after', sid, '' })
      elseif why ~= 'canceled' then
        after(sid, get(sid, 'input'))
      end
    end
    result = { 'ok', string_list(rids), encoded_pubs(), encoded_events(),
      wake_at and string.format('%d', wake_at) or '' }
  else
    local rids = {}
    take_running(sid, sid, rids)
    drop_queues(sid)
    redis.call('DEL', aux('held', sid))
    redis.call('DEL', SENT, INFLIGHT, DELAYED)
    set(sid, 'status', 'canceled')
    set(sid, 'ended', NOW_S)
    stat('w:canceled', 1)
    if get(sid, 'waited') then redis.call('PUBLISH', H .. ':done', sid) end
    result = { 'ok', string_list(rids) }
  end
elseif OP == 'reconcile' then
  -- Re-send up to ARGV[6] dispatches that are due and never started.
  if redis.call('EXISTS', H) == 0 then
    return { 'gone' }
  end
  for _, x in ipairs(redis.call('ZRANGEBYSCORE', SENT, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[6]))) do
    resend(x)
  end
  release_due(tonumber(ARGV[6]))
  local nxt = tonumber(redis.call('ZRANGE', SENT, 0, 0, 'WITHSCORES')[2] or '')
  local held_until = tonumber(redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')[2] or '')
  if held_until and (nxt == nil or held_until < nxt) then nxt = held_until end
  result = { 'ok', encoded_pubs(), nxt and string.format('%d', nxt) or '', get(ROOT, 'status') or 'pending',
    tostring(redis.call('SCARD', INFLIGHT)) }
elseif OP == 'lease' then
  -- Run ARGV[7] of task ARGV[6] still runs: its lease lasts ARGV[8] ms from now ('0':
  -- released, so that the next attempt of the same run starts at once). 'lost': the task
  -- is not (or no longer) this run's, or it settled.
  local sid, rid, ms = ARGV[6], ARGV[7], tonumber(ARGV[8])
  local d = def(sid)
  if d == nil or d.k ~= 'task' or get(sid, 'run_id') ~= rid or TERMINAL[get(sid, 'status')]
      or get(sid, 'outcome') then
    result = { 'lost' }
  else
    if ms > 0 then set(sid, 'lease', NOW + ms) else del(sid, 'lease') end
    result = { 'ok' }
  end
elseif OP == 'payload' then
  -- Read only: the payload task sid is (or would be) dispatched with.
  local d = def(ARGV[6])
  if d == nil or d.k ~= 'task' then return { 'missing' } end
  return { 'ok', payload_of(ARGV[6]) }
elseif OP == 'retry' then
  -- Re-run failed root sid from its failure points. Refused unless failed, and while an
  -- error callback of a failed node is dispatched or running (re-arming it would lose it).
  local sid = ARGV[6]
  local d = def(sid)
  local st = get(sid, 'status')
  if d == nil then
    result = { 'err', 'missing' }
  elseif up(d) then
    result = { 'err', 'not_root' }
  elseif st ~= 'failed' then
    result = { 'err', 'not_failed', st or 'pending' }
  elseif callbacks_busy() then
    result = { 'err', 'busy' }
  else
    rerun(sid)
    result = { 'ok', encoded_pubs(), encoded_events() }
  end
else
  return redis.error_reply('mageflow: unknown operation ' .. tostring(OP))
end

if #stream > 0 then
  redis.call('XADD', EVENTS, 'MAXLEN', '~', EVENTS_MAX, '*', 'e', '[' .. table.concat(stream, ',') .. ']')
  touched[EVENTS] = true
end

local ttl = TTL_ACTIVE
if TERMINAL[get(ROOT, 'status')] then
  ttl = TTL_DONE
  if not root_was_final then expire_everything(ttl) end
end
redis.call('EXPIRE', H, ttl)
for k, _ in pairs(touched) do
  redis.call('EXPIRE', k, ttl)
end
if stats_bucket then redis.call('EXPIRE', stats_bucket, STATS_TTL) end
return result
