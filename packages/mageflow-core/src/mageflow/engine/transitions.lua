-- MageFlow engine: the one orchestration state machine. One call = one atomic transition
-- of one workflow. Redis runs it with EVALSHA; the embedded default runs this same file
-- in-process (mageflow.store.lua_host). Nothing else decides what runs next.
--
-- CALL   KEYS[1] the workflow hash H = "<prefix>:{<wf>}" (the live index for op "claim")
--        ARGV[1] op, ARGV[2] now (ms), ARGV[3] TTL while active (s), ARGV[4] TTL once the
--        root finished (s), ARGV[5] resend delay (ms), ARGV[6] the stream delivery ('' when
--        off, see STREAM DELIVERY), ARGV[7..] the op's arguments.
-- REPLY  a flat array of strings ('finish': an array of them, one per finish);
--        mageflow/engine/replies.py decodes it.
--
-- KEYS (all share H's hash tag, so one call touches one Cluster slot)
--   H                      hash: "<sid>" = definition JSON, "<sid>:<field>" = state,
--                          "L" = '2' when its nodes keep run records (see RUN RECORD)
--   H:steps:<chain>        list of the chain's step sids, in order
--   H:items:<swarm>        list of the swarm's item sids, in item order
--   H:queue:<swarm>        zset of items waiting for a free slot; score orders them:
--                          higher priority first, first queued first within a priority.
--                          The items a swarm queues at its start and close wait past its
--                          cursor instead, written nothing per item (see LAZY QUEUE)
--   H:prio:<swarm>         list (client, in item order): the items with a priority > 0,
--                          put on the zset when the swarm queues its items
--   H:result:<swarm>       list: the parts of a big swarm's result assembled so far, one
--                          per COLLECT_CHUNK items (see maybe_complete)
--   H:collect              zset: swarms whose result is being assembled across calls;
--                          score = when (ms); the 'collect' op and the reconciler go on
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
--   H:holders              set: the nodes that ever had an H:held list (the root's final
--                          expiry reaches their held lists through it, not by walking)
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
--   x          a packed workflow's run record (see RUN RECORD): status, sent, started,
--              attempts, ended and run_id in one field         engine
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
--              (a swarm item past its swarm's cursor is queued without it: M.queued)
--   qseq       swarm: items queued so far (FIFO order within a priority)  enqueue
--   started / ended   ms of the first attempt / of settling    start, settle
--   input      a composite's inherited messages: JSON objects joined by ','   start_node
--   input_ret / input_err  result / error a composite was started with        start_node
--   step       chain: 0-based index of the running step        start_node, chain_step_done
--   scanned    swarm: its cursor, the items of H:items before it were taken (started,
--              or skipped as queued or started on their own)    dequeue, requeue
--   lazy       swarm: '1' the items from the cursor up to qend are queued (it started);
--              '0' they were, and the queue was dropped (canceled, failure budget)
--                                                              queue_unqueued, drop_lazy
--   ahead      swarm: items past the cursor already queued or started on their own (run,
--              priority, canceled while queued): the cursor skips them  run, dequeue
--   qend       swarm: the end of its lazily queued range of H:items     queue_unqueued
--   qmid / qsa / qsb  swarm: the range's parts queued at its start (up to qmid) and at
--              its close, and the `qseq` each was queued at        queue_unqueued
--   late       '1': a swarm item added after its swarm queued its items: not queued
--              until the swarm is closed (or run)                 add
--   beyond     swarm: items run on their own at or past qend (join `ahead` at the close)
--   pscan      swarm: entries of H:prio already put on the zset      queue_unqueued
--   collected  swarm: items whose result is assembled so far (a big swarm's completion)
--   closed     swarm: '1' when it takes no more items          client, close
--   ttl_at     ms when the node's keys (and, for the root, the workflow's) were last
--              given their TTL (see KEY LIFETIMES)                 refresh
--   tpl        swarm: the definition its templated items share (see ITEM TEMPLATES)
--                                                              client, add
--   flat       swarm: '1' while every item is a plain task without callbacks (no keys
--              of its own but a held list): the root's final expiry does not walk its
--              items. Absent: they are walked (older swarms too)   client, add
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

-- Every chunk-level name is a field of M: a closure then captures one upvalue (Lua 5.1
-- resolves each captured local by walking the list of open upvalues, so ~100 captured
-- chunk locals made every call pay ~60 us before doing anything).
local M = {}


M.ROOT = 'r'
M.TERMINAL = { done = true, failed = true, canceled = true, skipped = true }
M.HOLDING = { suspended = true, interrupted = true }

M.CANCELED = '{"type":"Canceled","message":"canceled by an operator"}'

-- Fields read in this call, so each is fetched from Redis at most once; every write to a
-- state field goes through set/del/incr, which keep it current (false = absent).

-- The cache is by node, then field: a cached read builds no key string.
function M.node_fields(sid)
  local t = M.fields[sid]
  if t == nil then
    t = {}
    M.fields[sid] = t
  end
  return t
end

-- RUN RECORD. A workflow whose root carries L = '2' (written by the client that built
-- it) keeps a node's status, sent, started, attempts, ended and run_id in one field
-- "<sid>:x", text "status|sent|started|attempts|ended|run_id" (trailing parts left out
-- when absent; run_id, last, may hold any character): one hash field instead of six per
-- node, read with one HGET and written once per call (M.flush). Older workflows keep
-- the six fields apart; this engine reads and writes both layouts.
M.REC = { status = 1, sent = 2, started = 3, attempts = 4, ended = 5, run_id = 6 }

-- COMPACT RUN IDS. A run id "<wf>.<sid>.<n>" (the stream delivery's) of node sid is kept
-- as "~<n>", and any other run id starting with "~" gets a second one: a finished swarm
-- item's record shrinks from ~95 to ~60 bytes, a smaller allocation in Redis. (Keeping
-- the times as offsets from `sent` too saved ~20 bytes more for 3.6% more instructions
-- per call: not kept.)

-- Fill node sid's table t from record text v (false: no record). One match splits it:
-- each of the first five parts stops at a bar, the run id takes the rest (cheaper than
-- five plain finds and their substrings, measured).
M.REC_PATTERN = '^([^|]*)|?([^|]*)|?([^|]*)|?([^|]*)|?([^|]*)|?(.*)$'
function M.unpack_rec(sid, t, v)
  if not v then
    t.status, t.sent, t.started, t.attempts, t.ended, t.run_id = false, false, false, false, false, false
    return
  end
  local a, b, c, d, e, f = string.match(v, M.REC_PATTERN)
  t.status = a ~= '' and a
  t.sent = b ~= '' and b
  t.attempts = d ~= '' and d
  t.started = c ~= '' and c
  t.ended = e ~= '' and e
  if string.byte(f, 1) == 126 then
    if string.byte(f, 2) == 126 then f = string.sub(f, 2) else f = M.WF .. '.' .. sid .. '.' .. string.sub(f, 2) end
  end
  t.run_id = f ~= '' and f
end

-- Run id rid of node sid, compact.
function M.short_run_id(sid, rid)
  if string.byte(rid, 1) == 126 then return '~' .. rid end
  local head = M.WF .. '.' .. sid .. '.'
  if string.sub(rid, 1, #head) == head then
    local n = string.sub(rid, #head + 1)
    local k = tonumber(n)
    if k and k >= 0 and string.format('%d', k) == n then return '~' .. n end
  end
  return rid
end

function M.load_rec(sid, t)
  M.unpack_rec(sid, t, redis.call('HGET', M.H, sid .. ':x'))
end

-- Remember that node sid's record changed: written at the end of the call.
function M.touch_rec(sid)
  if not M.dirty[sid] then
    M.dirty[sid] = true
    M.dirty_list[#M.dirty_list + 1] = sid
  end
end

-- The field a client-written record (name ending ':status') is stored under: in a packed
-- workflow a node's status alone is its run record ("pending").
function M.stored_name(f)
  if M.PACKED and string.sub(f, -7) == ':status' then return string.sub(f, 1, -7) .. 'x' end
  return f
end

-- WRITE-BEHIND. Every state field a call writes (set, del, incr) is kept in the call's
-- copy and written once at the end, with the changed run records: one HSET and at most
-- one HDEL per call, however many fields changed, and an increment of a field read ahead
-- costs no command. Reads see the copy (get); a direct write to H (the add op) is
-- preceded by a flush, so that a later write always wins.
function M.write(name, v)
  if M.writes[name] == nil then M.write_list[#M.write_list + 1] = name end
  M.writes[name] = v
end

-- Write the changed run records and fields: one HSET (and one HDEL for records left
-- empty and fields deleted). A record's trailing empty parts are left out, built without
-- a pattern (a run id may end in a bar).
function M.flush()
  local n = #M.dirty_list
  if n == 0 and #M.write_list == 0 then return end
  local sets, dels = {}, {}
  for i = 1, n do
    local sid = M.dirty_list[i]
    local t = M.fields[sid]
    local st, se, sa, at, en = t.status or '', t.sent or '', t.started or '', t.attempts or '', t.ended or ''
    local v
    if t.run_id then
      v = st .. '|' .. se .. '|' .. sa .. '|' .. at .. '|' .. en .. '|' .. M.short_run_id(sid, t.run_id)
    elseif t.ended then
      v = st .. '|' .. se .. '|' .. sa .. '|' .. at .. '|' .. en
    elseif t.attempts then
      v = st .. '|' .. se .. '|' .. sa .. '|' .. at
    elseif t.started then
      v = st .. '|' .. se .. '|' .. sa
    elseif t.sent then
      v = st .. '|' .. se
    else
      v = st
    end
    if v == '' then
      dels[#dels + 1] = sid .. ':x'
    else
      sets[#sets + 1] = sid .. ':x'
      sets[#sets + 1] = v
    end
  end
  for i = 1, #M.write_list do
    local name = M.write_list[i]
    local v = M.writes[name]
    if v then
      sets[#sets + 1] = name
      sets[#sets + 1] = v
    else
      dels[#dels + 1] = name
    end
  end
  M.dirty, M.dirty_list, M.writes, M.write_list = {}, {}, {}, {}
  for i = 1, #sets, 1000 do redis.call('HSET', M.H, unpack(sets, i, math.min(i + 999, #sets))) end
  for i = 1, #dels, 1000 do redis.call('HDEL', M.H, unpack(dels, i, math.min(i + 999, #dels))) end
end

function M.get(sid, f)
  local t = M.fields[sid] or M.node_fields(sid)
  local v = t[f]
  if v == nil then
    if M.PACKED and M.REC[f] then
      M.load_rec(sid, t)
      v = t[f]
    else
      v = redis.call('HGET', M.H, sid .. ':' .. f)
      t[f] = v
    end
  end
  if v == false then return nil end
  return v
end

-- Streamed events (H:events, read by wf.events()): one compact entry per state change,
-- JSON [sid, event, kind, task name, ms, attempt, status]; a call's changes go in one
-- stream entry (a JSON array of them), appended at the end of the call.
M.EVENTS_MAX = '10000' -- entries (transitions) kept per workflow (XADD MAXLEN ~)
M.STATUS_EVENT = { done = 'done', failed = 'failed', canceled = 'canceled',
  suspended = 'suspended', interrupted = 'interrupted', skipped = 'skipped' }

M.names_json = {} -- task name -> its JSON text (names are plain text as a rule)
function M.name_json(t)
  local j = M.names_json[t]
  if j == nil then
    if string.find(t, '[%c"\\]') then j = cjson.encode(t) else j = '"' .. t .. '"' end
    M.names_json[t] = j
  end
  return j
end
-- When it happened: now, or M.note_ms while a caller sets it (a first delivery's start)
function M.note(sid, event, attempt, status)
  local d = M.def(sid)
  -- sids, event names, kinds and statuses are plain identifiers: concatenated as JSON
  M.stream[#M.stream + 1] = '["' .. sid .. '","' .. event .. '","' .. (d and d.k or 'task') .. '",'
    .. M.name_json(d and d.t or '') .. ',' .. (M.note_ms or M.NOW_S) .. ',' .. (attempt or 0)
    .. ',"' .. (status or 'active') .. '"]'
end

-- An observer event of the hot paths as JSON: its parts are identifiers (sids, kinds,
-- statuses, times), which need no escaping, so it is concatenated (what cjson.encode
-- would give for them, without building a table per event).
function M.event_text(a, b, c, e)
  return '["' .. a .. '","' .. b .. '","' .. c .. '","' .. e .. '"]'
end

-- The event of sid's status going from old to v (nil: no change worth streaming).
function M.status_event(old, v)
  if old == v then return nil end
  local held = old == 'suspended' or old == 'interrupted'
  if v == 'active' then return held and 'resumed' or 'started' end
  if v == 'pending' then return held and 'resumed' or 'requeued' end
  return M.STATUS_EVENT[v] or v
end

function M.set(sid, f, v)
  if type(v) == 'number' then v = string.format('%d', v) end
  if f == 'status' then
    local ev = M.status_event(M.get(sid, f), v)
    if ev then M.note(sid, ev, 0, v) end
  end
  if M.PACKED and M.REC[f] then
    local t = M.node_fields(sid)
    if t[f] == nil then M.load_rec(sid, t) end -- the record's other parts are kept
    t[f] = v
    M.touch_rec(sid)
    return
  end
  M.put(sid, f, v)
end

-- Field f of sid written as is (v text or a number), without set's status event and
-- run-record handling: a plain field.
function M.put(sid, f, v)
  if type(v) == 'number' then v = string.format('%d', v) end
  M.write(sid .. ':' .. f, v)
  M.node_fields(sid)[f] = v
end

function M.del(sid, f)
  local t = M.node_fields(sid)
  if t[f] == false then return end -- read absent in this call: nothing to delete
  if M.PACKED and M.REC[f] then
    if t[f] == nil then M.load_rec(sid, t) end
    if t[f] then
      t[f] = false
      M.touch_rec(sid)
    end
    return
  end
  M.write(sid .. ':' .. f, false)
  t[f] = false
end

-- A counter is read (ahead, on the hot paths) and written back with the call's other
-- writes (see WRITE-BEHIND); every reader of a counter passes it through tonumber. A
-- plain field is written as M.set would, without its status and record checks.
function M.incr(sid, f, by)
  local n = tonumber(M.get(sid, f) or '0') + by
  if M.PACKED and M.REC[f] then M.set(sid, f, n) else M.put(sid, f, n) end
  return n
end

-- The definition of sid, or nil when there is none (definitions never change).
-- Decoded definitions are shared, never modified: where the engine stays loaded between
-- calls (a Redis function, the in-process host) the same text is decoded once, and most
-- texts repeat (every item of a swarm of one task has the same definition). At most
-- DECODED_MAX texts are kept.
M.DECODED_MAX = 512
M.decoded, M.n_decoded = {}, 0
M.def = function(sid)
  local d = M.defs[sid]
  if d == nil then
    local raw = M.raw_defs[sid] -- read ahead with the node's fields (prefetch), or nil
    if raw == nil then raw = redis.call('HGET', M.H, sid) end
    if raw == false then raw = M.templated(sid) end
    if raw == false then
      M.raw_defs[sid] = false
      return nil
    end
    d = M.decoded[raw]
    if d == nil then
      d = cjson.decode(raw)
      if M.n_decoded >= M.DECODED_MAX then M.decoded, M.n_decoded = {}, 0 end
      M.decoded[raw], M.n_decoded = d, M.n_decoded + 1
    end
    M.defs[sid] = d
  end
  return d
end

-- ITEM TEMPLATES. In a packed workflow the items a swarm is built with (or that are added
-- to it in bulk) keep no definition of their own: they all have the one in their swarm's
-- field "<swarm>:tpl", and an item exists while its run record does. An item sid is
-- "<swarm>.i" and 16 hex digits (no other sid ends in ".i" and 16 characters), so the
-- swarm is read off the sid. O(1) per item; an item with a definition of its own (a
-- signature added to the swarm) keeps it.
function M.item_swarm(sid)
  if #sid > 18 and string.byte(sid, -18) == 46 and string.byte(sid, -17) == 105 then
    return string.sub(sid, 1, -19)
  end
  return nil
end

-- Item sid's definition from its swarm s's template, or false: none, or no run record.
function M.from_template(sid, s)
  local tpl = M.get(s, 'tpl')
  if tpl == nil or M.get(sid, 'status') == nil then return false end
  return tpl
end

function M.templated(sid)
  local s = M.PACKED and M.item_swarm(sid)
  if not s then return false end
  return M.from_template(sid, s)
end

-- KEY LIFETIMES. A workflow's keys expire TTL_ACTIVE after their last refresh (TTL_DONE
-- once its root finished). A call gives its TTL to:
--   - a key it wrote in a way that may have created it (RPUSH, SADD, ZADD, a stream's
--     first entry: M.aux_w, M.touched), always: a created key has none;
--   - all auxiliary keys of a node whose keys it uses (M.aux), at most once per
--     REFRESH_MS per node (its field ttl_at), all kinds together, so that a key this call
--     does not use is refreshed with those it does;
--   - H and the workflow-wide keys, with the root's refresh (every call checks it).
-- So a busy swarm pays an EXPIRE per key it may create, not one per key it reads; a key
-- is refreshed within REFRESH_MS of its node being used, as when every call refreshed it.
-- A call on a finished workflow refreshes everything it uses (TTL_DONE), as before, and
-- writes no ttl_at (it reads none).
M.NODE_AUX = { chain = { 'steps' }, swarm = { 'items', 'queue', 'running', 'prio', 'result' },
  graph = { 'nodes', 'sources', 'sinks', 'queue', 'running' } }

-- The keys a node of definition d owns (its held list, its kind's lists and sets).
function M.node_keys(sid, d)
  local ks = { M.H .. ':held:' .. sid }
  for _, kind in ipairs(d and M.NODE_AUX[d.k] or {}) do ks[#ks + 1] = M.H .. ':' .. kind .. ':' .. sid end
  return ks
end

-- The workflow's own keys: its hash and the keys no one node owns.
function M.workflow_keys()
  return { M.H, M.EVENTS, M.SENT, M.INFLIGHT, M.DELAYED, M.CONTS, M.COLLECT, M.H .. ':holders' }
end

function M.refresh(sid)
  if M.refreshed[sid] then return end
  M.refreshed[sid] = true
  if not M.root_was_final and M.NOW - tonumber(M.get(sid, 'ttl_at') or '0') < M.REFRESH_MS then return end
  M.due[#M.due + 1] = sid -- its ttl_at is written with the call's changes, if any
  for _, k in ipairs(M.node_keys(sid, M.def(sid))) do M.touched[k] = true end
  if sid == M.ROOT then
    for _, k in ipairs(M.workflow_keys()) do M.touched[k] = true end
  end
end

-- The name of auxiliary key `kind` of node sid (its node's keys refreshed when due).
function M.aux(kind, sid)
  if not M.refreshed[sid] then M.refresh(sid) end
  return M.H .. ':' .. kind .. ':' .. sid
end

-- The same, for a write that may create the key: its TTL is set at the end of the call.
function M.aux_w(kind, sid)
  local k = M.aux(kind, sid)
  M.touched[k] = true
  return k
end

-- STATISTICS (optional KEYS[2]): per-minute bucket hashes "<KEYS[2]>:<minute>", each
-- expiring STATS_TTL after its minute, fields "t:<task>:<counter>" (started, retried,
-- done, failed, ms = summed duration, h<i> = durations <= STATS_BOUNDS[i] ms, h0 = more)
-- and "w:<status>" for roots (started, done, failed, canceled). O(1) per event, memory
-- bounded by the minutes kept x the task names. The buckets are cross-workflow keys in
-- another Cluster slot than H: the client passes KEYS[2] only where one script may touch
-- both (a single Redis, the in-process store).
M.STATS_TTL = '3660'
M.STATS_BOUNDS = { 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000 }


M.BY = { [1] = '1' } -- increments as text: Redis 7.0 formats a number with snprintf
-- An event's counts are summed in the call and written at its end: one HINCRBY per field
-- per call, so the finishes of a shared call count their task's fields once.
function M.stat(field, by)
  if not M.STATS then return end
  local sum = M.stat_sums[field]
  if sum == nil then M.stat_list[#M.stat_list + 1] = field end
  M.stat_sums[field] = (sum or 0) + by
end

function M.flush_stats()
  if #M.stat_list == 0 then return end
  local bucket = M.STATS .. ':' .. string.format('%d', math.floor(M.NOW / 60000))
  local created = false -- a bucket is created with its first field: its TTL is set then
  for _, field in ipairs(M.stat_list) do
    local by = M.stat_sums[field]
    if redis.call('HINCRBY', bucket, field, M.BY[by] or string.format('%d', by)) == by then
      created = true
    end
  end
  if created then redis.call('EXPIRE', bucket, M.STATS_TTL) end
end

-- Task sid's final outcome: counted with its duration since its first attempt.
function M.stat_finished(sid, ok)
  if not M.STATS then return end
  local t = 't:' .. M.def(sid).t .. ':'
  M.stat(t .. (ok and 'done' or 'failed'), 1)
  local ms = M.NOW - tonumber(M.get(sid, 'started') or M.NOW_S)
  if ms ~= 0 then M.stat(t .. 'ms', ms) end -- an absent sum reads as 0
  local b = 0
  for i, bound in ipairs(M.STATS_BOUNDS) do
    if ms <= bound then b = i break end
  end
  M.stat(t .. 'h' .. b, 1)
end

-- A swarm item that holds its slot without running (a task held by a suspend or an
-- interrupt, or an item that ended under a held swarm and waits to be counted) is
-- 'paused' and counted in its swarm's n_paused, so the swarm's running count
-- (n_running - n_paused) stays true while it is held.
function M.pause(sid)
  local p = M.def(sid).p
  if p and M.def(p).k == 'swarm' and not M.get(sid, 'paused') then
    M.set(sid, 'paused', '1')
    M.incr(p, 'n_paused', 1)
  end
end

function M.unpause(sid)
  if M.get(sid, 'paused') then
    M.del(sid, 'paused')
    local p = M.def(sid).p
    if tonumber(M.get(p, 'n_paused') or '0') > 0 then M.incr(p, 'n_paused', -1) end
  end
end

function M.up(d)
  return d.p or d.of
end

-- The sid of chain c's step i (0-based), or nil past the end.
function M.step_at(c, i)
  local s = redis.call('LINDEX', M.H .. ':steps:' .. c, i)
  if s == false then return nil end
  return s
end

function M.is_item(d)
  if not d.p then return false end
  local pd = M.def(d.p)
  return pd ~= nil and pd.k == 'swarm'
end

function M.join(a, b)
  if a == nil or a == '' then return b or '' end
  if b == nil or b == '' then return a end
  return a .. ',' .. b
end

-- A JSON array of plain strings (cjson encodes an empty table as {}).
function M.string_list(t)
  local parts = {}
  for i, s in ipairs(t) do parts[i] = cjson.encode(s) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- The payload a task receives: inherited messages, own message, previous result, error.
function M.payload(inl, own, ret, err)
  local parts = { '"in":[' .. (inl or '') .. ']' }
  if own then parts[#parts + 1] = '"own":' .. own end
  if ret then parts[#parts + 1] = '"ret":' .. ret end
  if err then parts[#parts + 1] = '"err":' .. err end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- A swarm item's payload is rebuilt from its swarm, so nothing of the swarm is copied
-- per item; any other task's payload is what emit stored.
function M.payload_of(sid)
  local d = M.def(sid)
  if M.is_item(d) then
    return M.payload(M.get(d.p, 'input'), M.get(sid, 'own'), M.get(d.p, 'input_ret'), M.get(d.p, 'input_err'))
  end
  return M.get(sid, 'payload') or M.payload('', nil, nil, nil)
end

-- When node sid may start (ms), or nil when it may start now. dl counts from the first
-- time the node became due; that time is kept, so a re-dispatch does not wait again.
function M.not_before(sid)
  local d = M.def(sid)
  if d.dl == nil and d.at == nil then return nil end
  local due = tonumber(M.get(sid, 'due') or '')
  if due == nil then
    due = d.at or (M.NOW + d.dl)
    M.set(sid, 'due', due)
  end
  if due <= M.NOW then return nil end
  return due
end

-- STREAM DELIVERY (ARGV[6], '' when off): the backend's messages are entries of Redis
-- streams on this server, and a dispatched task's message is appended here, in the
-- transition that dispatches it: no publish round trip, and nothing is lost if the
-- caller dies right after. JSON {f: entry field, m: MAXLEN (~) or null, s: the default
-- queue's stream, r: prefix of a routed queue's stream (r .. queue), d / q: the message
-- template of the default / a routed queue: literal texts at odd positions, holes at
-- even ones: id (the run id), task (name), payload, key (the MageFlow key), stream}.
-- A run id is "<key>.<n>", n counting the workflow's deliveries (field r:nd).
-- FIRST DELIVERIES: a first dispatch's payload also carries "fold": {t: when it was
-- dispatched (ms), task, kw, ids: what its start would reply}. A worker that receives it
-- for the first time, soon after t (well before the reconciler could re-send it), runs
-- the user code at once and passes its run id to finish, which takes the start in the
-- same call (start_task with ran); a task still running after a third of its lease takes
-- its start on its own (the start op). A re-sent message carries no "fold".

-- The delivery configurations decoded (ARGV[6] texts; where the engine stays loaded
-- between calls, each is decoded once).
M.deliveries, M.n_deliveries = {}, 0

-- Append task sid's message with payload pl to its stream; false when the message is
-- for the client to publish (no delivery, or the task manager holds a start time).
function M.deliver(sid, pl, resent)
  if M.DELIVERY == nil or M.DELIVERY == '' then return false end
  local d = M.def(sid)
  if not resent then -- a first dispatch: what its start would reply, and when it was sent
    pl = string.sub(pl, 1, -2) .. ',"fold":{"t":' .. M.NOW_S .. ',"task":' .. M.name_json(d.t)
      .. ',"kw":' .. (M.get(sid, 'kwargs') or '{}')
      .. ',"ids":' .. (M.get(sid, 'idents') or '{}') .. '}}'
  end
  if d.nd and M.not_before(sid) then return false end
  local cfg = M.deliveries[M.DELIVERY]
  if cfg == nil then
    cfg = cjson.decode(M.DELIVERY)
    if M.n_deliveries >= 8 then M.deliveries, M.n_deliveries = {}, 0 end
    M.deliveries[M.DELIVERY], M.n_deliveries = cfg, M.n_deliveries + 1
  end
  local stream, template = cfg.s, cfg.d
  if d.q and d.q ~= 'default' then stream, template = cfg.r .. d.q, cfg.q end
  local key = M.WF .. '.' .. sid
  local holes = {
    id = cjson.encode(key .. '.' .. string.format('%d', M.incr(M.ROOT, 'nd', 1))),
    task = M.name_json(d.t), payload = pl, key = cjson.encode(key), stream = cjson.encode(stream),
  }
  local parts = {}
  for i, part in ipairs(template) do
    if i % 2 == 1 then parts[i] = part else parts[i] = holes[part] end
  end
  local msg = table.concat(parts)
  local added
  if cfg.m and cfg.m ~= cjson.null then
    added = redis.pcall('XADD', stream, 'MAXLEN', '~', cfg.m, '*', cfg.f, msg)
  else
    added = redis.pcall('XADD', stream, '*', cfg.f, msg)
  end
  -- refused (e.g. the key is not a stream): the client publishes it and meets the error
  return type(added) ~= 'table' or added.err == nil
end

-- What task sid's finish dispatched for the client to publish, kept so that a
-- redelivery of the finished run re-issues it (redo). Nothing when every message went
-- out with the transition itself (stream delivery): none can be lost after it.
function M.record_owed(sid)
  local owed = {}
  for _, x in ipairs(M.sent_now) do
    if not M.delivered[x] then owed[#owed + 1] = x end
  end
  if #owed > 0 then M.set(sid, 'owed', M.string_list(owed)) end
end

-- Task sid's message goes out: appended to its stream, or for the client to publish.

function M.send(sid, pl, resent)
  if M.deliver(sid, pl, resent) then
    M.delivered[sid] = true
  else
    M.pubs[#M.pubs + 1] = M.spec(sid, pl)
  end
end

function M.spec(sid, pl)
  local d = M.def(sid)
  local s = '[' .. cjson.encode(d.t) .. ',' .. cjson.encode(sid) .. ',' .. pl
  local due = d.nd and M.not_before(sid)
  if d.pr or due or d.q then
    s = s .. ',' .. (d.pr and tostring(d.pr) or 'null') .. ',' .. (due and string.format('%d', due) or 'null')
  end
  if d.q then s = s .. ',' .. cjson.encode(d.q) end
  return s .. ']'
end

-- The nearest node from sid upwards that is canceled or holds, and why.
function M.blocker(sid)
  local cur = sid
  while cur do
    local st = M.get(cur, 'status')
    if st == 'canceled' then return 'canceled', cur end
    if M.HOLDING[st] then return 'hold', cur end
    local d = M.def(cur)
    cur = d and M.up(d)
  end
  return nil, nil
end

-- Remember entry until node `at` resumes.
function M.hold(at, entry)
  if redis.call('RPUSH', M.aux_w('held', at), cjson.encode(entry)) == 1 then
    redis.call('SADD', M.H .. ':holders', at)
    M.touched[M.H .. ':holders'] = true
  end
end

-- Publish task sid now, recorded so the reconciler can re-send it until it starts (a task
-- the task manager delays: until that long after its time).
function M.dispatch(sid, pl)
  M.send(sid, pl)
  M.sent_now[#M.sent_now + 1] = sid
  local due = M.def(sid).nd and M.not_before(sid)
  redis.call('ZADD', M.SENT, (due or M.NOW) + M.RESEND_AFTER, sid)
  M.touched[M.SENT] = true
end

-- Hold node sid's start until `due`; the reconciler's pass releases it (release_due). A
-- task keeps its payload as emit would (a swarm item's is rebuilt: nothing copied).
function M.defer(sid, due, inl, own, ret, err)
  local d = M.def(sid)
  if d.k ~= 'task' then
    M.set(sid, 'deferred', cjson.encode({ inl or '', own or '', ret or '', err or '' }))
  elseif not M.is_item(d) then
    M.set(sid, 'payload', M.payload(inl, own, ret, err))
  end
  redis.call('ZADD', M.DELAYED, due, sid)
  M.touched[M.DELAYED] = true
  if M.wake_at == nil or due < M.wake_at then M.wake_at = due end
end

-- The context every node directly under sid's nearest composite ancestor receives.
function M.context_above(sid)
  local u = M.up(M.def(sid))
  while u do
    local ud = M.def(u)
    if ud.k ~= 'task' then return M.get(u, 'context') end
    u = M.up(ud)
  end
  return nil
end

-- Task sid is due with payload pl: dispatch it, hold it, or drop it (canceled workflow).
function M.emit(sid, pl)
  if not M.is_item(M.def(sid)) then M.set(sid, 'payload', pl) end
  local why, at = M.blocker(sid)
  if why == 'canceled' then return end
  if why == 'hold' then
    M.hold(at, { 'pub', sid })
    return
  end
  M.dispatch(sid, pl)
end

-- Mark a composite active; a held one keeps showing its hold and resumes as active.
function M.activate(sid)
  if M.HOLDING[M.get(sid, 'status')] then
    M.set(sid, 'held_from', 'active')
  else
    M.set(sid, 'status', 'active')
  end
end




M.PRIORITY_MAX = 9
M.SEQ_SPAN = 1099511627776 -- 2^40 queue positions per priority: scores stay exact

-- Put item `it` on swarm s's queue: higher priority first, FIFO within a priority.
function M.enqueue(s, it)
  local seq = M.incr(s, 'qseq', 1)
  local pr = M.def(it).pr or 0
  local score = string.format('%.0f', (M.PRIORITY_MAX - pr) * M.SEQ_SPAN + seq)
  redis.call('ZADD', M.aux_w('queue', s), score, it)
end

-- LAZY QUEUE. A swarm queues the items it has when it starts, and those added later
-- when it is closed (queue_unqueued), writing nothing per item: the items of H:items from
-- its cursor (`scanned`) up to `qend` count as queued (`lazy` = '1'), in item order, each
-- part as queued when it was (qsa / qsb, see dequeue). The zset holds the rest: the items
-- with a priority (H:prio, put there by queue_unqueued), those run on their own, those
-- retry queued again. The cursor skips an item that carries
-- `queued` or `sent` (run or started on its own; `ahead` counts them): O(1) per item,
-- amortized. Every item before the cursor carries one of them or ended canceled (which
-- dequeue marks `queued`), and an item added to a swarm that queued its items already
-- carries `late` (past qend until the close), so M.queued knows an item's state without
-- its index.
M.CURSOR_BATCH = 100 -- items read past the cursor per LRANGE, at most (2 at first, doubling)
M.CURSOR_FIELDS = { { 'lazy', 'scanned', 'qend', 'qmid', 'qsa', 'qsb' } }

-- Read the fields of read-ahead list `plan` of node sid in one HMGET (each then read from
-- this call's copy); with_def: its definition too, unless decoded already. A list is
-- { plain fields, run-record parts or nil }, split by hand so that no call sorts names:
-- a packed workflow reads the parts as its one record field, unless read already.
function M.prefetch(sid, plan, with_def)
  local t = M.fields[sid] or M.node_fields(sid)
  local plain, parts = plan[1], plan[2]
  local ks = {}
  local n = #plain
  for i = 1, n do ks[i] = sid .. ':' .. plain[i] end
  local m, rec = n, false
  if parts then
    if not M.PACKED then
      for i = 1, #parts do ks[n + i] = sid .. ':' .. parts[i] end
      m = n + #parts
    elseif t.status == nil then
      m, rec = n + 1, true
      ks[m] = sid .. ':x'
    end
  end
  local def = with_def and M.defs[sid] == nil
  -- an item's swarm, whose template (ITEM TEMPLATES) and definition are read ahead too
  local swarm, tpl_at, sdef_at
  if def then
    m = m + 1
    ks[m] = sid
    swarm = M.PACKED and M.item_swarm(sid)
    if swarm and M.node_fields(swarm).tpl == nil then
      m = m + 1
      ks[m] = swarm .. ':tpl'
      tpl_at = m
    end
    if swarm and M.defs[swarm] == nil and M.raw_defs[swarm] == nil then
      m = m + 1
      ks[m] = swarm
      sdef_at = m
    end
  end
  if m == 0 then return end
  local vs = redis.call('HMGET', M.H, unpack(ks, 1, m))
  for i = 1, n do
    local f = plain[i]
    if t[f] == nil then t[f] = vs[i] end
  end
  if rec then
    M.unpack_rec(sid, t, vs[n + 1])
  elseif parts and not M.PACKED then
    for i = 1, #parts do
      local f = parts[i]
      if t[f] == nil then t[f] = vs[n + i] end
    end
  end
  if tpl_at then M.fields[swarm].tpl = vs[tpl_at] end
  if sdef_at then M.raw_defs[swarm] = vs[sdef_at] end
  if def then
    local raw = vs[(tpl_at or sdef_at or m + 1) - 1]
    if raw == false and swarm then raw = M.from_template(sid, swarm) end
    M.raw_defs[sid] = raw
  end
end

-- What the hot paths read of a task that ends (finish), of the swarm it belongs to, and
-- of the next item that swarm starts: each list in one HMGET instead of a HGET per field.
M.ENDING_FIELDS = { { 'held_from', 'outcome', 'cont', 'lease', 'paused', 'waited' },
  { 'status', 'run_id', 'sent', 'started' } }
M.SWARM_FIELDS = { { 'outcome', 'n_failed', 'n_running', 'n_ended', 'closed', 'input', 'input_ret',
  'input_err', 'lazy', 'scanned', 'qend', 'qmid', 'qsa', 'qsb', 'ttl_at' }, { 'status', 'sent' } }
M.NEXT_FIELDS = { { 'queued', 'own', 'rerun', 'kwargs', 'idents' }, { 'sent', 'status' } }

-- Item c (0-based, before `stop`) of swarm s's H:items, its fields and definition read
-- ahead: the call reads the list in windows, 2 items at first, then doubling.
function M.item_at(s, c, stop)
  local w = M.window[s]
  if w == nil or c < w[1] or c >= w[1] + #w[2] then
    local size = w and math.min(2 * #w[2], M.CURSOR_BATCH) or 2
    w = { c, redis.call('LRANGE', M.aux('items', s), c, math.min(c + size, stop) - 1) }
    M.window[s] = w
  end
  local x = w[2][c - w[1] + 1]
  if M.node_fields(x).sent == nil then M.prefetch(x, M.NEXT_FIELDS, true) end
  return x
end

-- Swarm s's next item past the cursor that waits (the cursor moves over those queued or
-- started on their own), or nil: its index (0-based) and sid.
function M.cursor_item(s)
  local c = tonumber(M.get(s, 'scanned') or '0')
  local stop = tonumber(M.get(s, 'qend') or '0')
  local skipped, it = 0, nil
  while c < stop do
    local x = M.item_at(s, c, stop)
    if not (M.get(x, 'queued') or M.get(x, 'sent')) then
      it = x
      break
    end
    c = c + 1
    skipped = skipped + 1
  end
  if skipped > 0 then
    M.set(s, 'scanned', c)
    M.incr(s, 'ahead', -skipped)
  end
  return c, it
end

-- The next queued item of swarm s, or nil: the zset's first, or the cursor's next item
-- when that was queued earlier (its range's `qseq`, see queue_unqueued) and the zset's
-- first has no priority.
function M.dequeue(s)
  local q = M.aux('queue', s)
  if M.node_fields(s).lazy == nil then M.prefetch(s, M.CURSOR_FIELDS) end
  if M.get(s, 'lazy') ~= '1' then return redis.call('ZPOPMIN', q)[1] end
  local c, it = M.cursor_item(s)
  if it then
    local top = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
    local seq = c < tonumber(M.get(s, 'qmid') or '0') and M.get(s, 'qsa') or M.get(s, 'qsb')
    if top[1] == nil or tonumber(top[2]) > M.PRIORITY_MAX * M.SEQ_SPAN + tonumber(seq or '0') then
      M.set(s, 'scanned', c + 1)
      if M.get(it, 'status') == 'canceled' then M.set(it, 'queued', '1') end
      return it
    end
  end
  return redis.call('ZPOPMIN', q)[1]
end

-- Swarm s queues its items not queued yet (it starts, or it is closed): the new range
-- up to qend by `lazy`, all of it as queued now (one `qseq`: FIFO against the zset); the
-- ones with a priority go on the zset now. O(items with a priority).
function M.queue_unqueued(s)
  if M.get(s, 'lazy') == '0' then return end -- its queue was dropped
  M.set(s, 'lazy', '1')
  local n = redis.call('LLEN', M.aux('items', s))
  local old = tonumber(M.get(s, 'qend') or '0')
  if n > old then
    local seq = M.incr(s, 'qseq', 1)
    if tonumber(M.get(s, 'scanned') or '0') >= old then -- nothing waits before it
      M.set(s, 'qmid', n)
      M.set(s, 'qsa', seq)
    elseif tonumber(M.get(s, 'qmid') or '0') == old then -- it follows the range that waits
      M.set(s, 'qsb', seq)
    end
    M.set(s, 'qend', n)
  end
  local beyond = tonumber(M.get(s, 'beyond') or '0')
  if beyond > 0 then -- items run on their own past the old qend are in range now
    M.incr(s, 'ahead', beyond)
    M.del(s, 'beyond')
  end
  local prio = M.aux('prio', s)
  local from = tonumber(M.get(s, 'pscan') or '0')
  local ranked = redis.call('LRANGE', prio, from, -1)
  if #ranked == 0 then return end
  M.set(s, 'pscan', from + #ranked)
  for _, it in ipairs(ranked) do
    if not M.get(it, 'queued') and not M.get(it, 'sent') then
      M.set(it, 'queued', '1')
      M.incr(s, 'ahead', 1)
      M.enqueue(s, it)
    end
  end
end

-- Is node sid queued (or was, before its swarm's queue was dropped)?
function M.queued(sid)
  if M.get(sid, 'queued') then return true end
  if M.get(sid, 'sent') then return false end
  local p = M.def(sid).p
  if p == nil or M.def(p).k ~= 'swarm' or M.get(p, 'lazy') == nil then return false end
  return M.get(p, 'closed') == '1' or not M.get(sid, 'late')
end

-- Swarm s's queue was dropped: the items past its cursor no longer wait.
function M.drop_lazy(s)
  if M.get(s, 'lazy') == '1' then M.set(s, 'lazy', '0') end
end

-- Item sid of swarm s is run on its own: queued (counted where the cursor will skip it).
function M.queue_item(s, sid)
  M.set(sid, 'queued', '1')
  if M.get(s, 'lazy') and M.get(sid, 'late') then M.incr(s, 'beyond', 1) else M.incr(s, 'ahead', 1) end
  M.enqueue(s, sid)
end

-- Item sid of swarm s leaves the queue (canceled): true when it was on it.
function M.unqueue(s, sid)
  if redis.call('ZREM', M.H .. ':queue:' .. s, sid) == 1 then return true end
  if M.get(s, 'lazy') ~= '1' or not M.queued(sid) or M.get(sid, 'queued') then return false end
  M.set(sid, 'queued', '1') -- past the cursor: the cursor skips it
  M.incr(s, 'ahead', 1)
  return true
end

-- COMPLETION. A closed, started swarm settles once every item ended, with the results in
-- item order. A swarm of more than COLLECT_CHUNK items assembles them across calls, at
-- most COLLECT_CHUNK per call: the parts go to H:result:<swarm>, `collected` counts the
-- items done, H:collect lists the swarm, and the reply says so (transition_reply); the
-- caller continues with 'collect' calls, the reconciler if the caller died.
M.COLLECT_CHUNK = 1000

-- Settle a closed, started swarm once every item ended: results in item order.
function M.maybe_complete(s)
  if M.def(s).k == 'graph' then return M.graph_maybe_complete(s) end
  if M.get(s, 'closed') ~= '1' or M.get(s, 'sent') == nil then return end
  if M.TERMINAL[M.get(s, 'status')] or M.get(s, 'outcome') then return end
  local n = redis.call('LLEN', M.aux('items', s))
  if tonumber(M.get(s, 'n_ended') or '0') < n then return end
  if M.collecting[s] then return end
  M.collecting[s] = true
  local from = tonumber(M.get(s, 'collected') or '0')
  local to = math.min(from + M.COLLECT_CHUNK, n)
  local items = redis.call('LRANGE', M.aux('items', s), from, to - 1)
  M.read_outcomes(items)
  local out = {}
  for i, it in ipairs(items) do
    if M.get(it, 'status') == 'done' then
      out[i] = M.get(it, 'result') or 'null'
    else
      out[i] = '{"mageflow_error":' .. (M.get(it, 'error') or 'null') .. '}'
    end
  end
  local part = table.concat(out, ',')
  if from == 0 and to >= n then
    M.settle(s, true, '[' .. part .. ']', nil)
    return
  end
  local parts = M.aux_w('result', s)
  if from == 0 then redis.call('DEL', parts) end
  redis.call('RPUSH', parts, part)
  if to < n then
    M.set(s, 'collected', to)
    redis.call('ZADD', M.COLLECT, M.NOW, s)
    M.touched[M.COLLECT] = true
    M.collect_more = '1'
    return
  end
  local whole = redis.call('LRANGE', parts, 0, -1)
  redis.call('DEL', parts)
  M.touched[parts] = nil
  redis.call('ZREM', M.COLLECT, s)
  M.touched[M.COLLECT] = true
  M.del(s, 'collected')
  M.settle(s, true, '[' .. table.concat(whole, ',') .. ']', nil)
end

-- Read the status and result of `items` not read yet in this call: one HMGET (at most
-- 2 x COLLECT_CHUNK fields) instead of two HGETs per item. A failed item's error is read
-- on its own (failures are few).
function M.read_outcomes(items)
  local ks, ids, rec = {}, {}, {}
  for _, it in ipairs(items) do
    local t = M.node_fields(it)
    if t.status == nil then
      ks[#ks + 1] = it .. (M.PACKED and ':x' or ':status')
      ids[#ks], rec[#ks] = it, true
    end
    if t.result == nil then
      ks[#ks + 1] = it .. ':result'
      ids[#ks] = it
    end
  end
  if #ks == 0 then return end
  local vs = redis.call('HMGET', M.H, unpack(ks))
  for i = 1, #ks do
    local t = M.fields[ids[i]]
    if not rec[i] then
      t.result = vs[i]
    elseif M.PACKED then
      M.unpack_rec(ids[i], t, vs[i])
    else
      t.status = vs[i]
    end
  end
end

-- Go on assembling the result of the swarm waiting longest in H:collect (one part).
function M.collect_next()
  local s = redis.call('ZRANGE', M.COLLECT, 0, 0)[1]
  if s == nil then return end
  M.touched[M.COLLECT] = true
  redis.call('ZREM', M.COLLECT, s)
  if M.def(s) and M.get(s, 'collected') then M.maybe_complete(s) end
end

-- Start queued items while the swarm has free slots (held or canceled: nothing starts).
M.fill = function(s)
  if M.filling[s] then return end
  if M.TERMINAL[M.get(s, 'status')] or M.get(s, 'sent') == nil then return end
  local why, at = M.blocker(s)
  if why == 'canceled' then return end
  if why == 'hold' then
    M.hold(at, { 'fill', s })
    return
  end
  local d = M.def(s)
  M.filling[s] = true
  while not M.TERMINAL[M.get(s, 'status')] do
    if d.mc ~= nil and tonumber(M.get(s, 'n_running') or '0') >= d.mc then break end
    local it = M.dequeue(s)
    if not it then break end
    M.incr(s, 'n_running', 1)
    redis.call('SADD', M.aux_w('running', s), it)
    if d.k == 'graph' then
      M.start_graph_node(s, it)
    else
      M.start_node(it, M.get(s, 'input'), M.get(it, 'own'), M.get(s, 'input_ret'), M.get(s, 'input_err'))
    end
  end
  M.filling[s] = nil
end

-- Start node sid with inherited messages inl, own message, previous result / error
-- (held until its time when it has a delay the task manager does not hold).
M.start_node = function(sid, inl, own, ret, err)
  local d = M.def(sid)
  if M.get(sid, 'status') == 'canceled' then -- canceled before it started: its parent reacts
    M.after(sid, inl)
    return
  end
  M.set(sid, 'sent', M.NOW_S)
  if not d.nd then
    local due = M.not_before(sid)
    if due then
      M.defer(sid, due, inl, own, ret, err)
      return
    end
  end
  if (d.k ~= 'task' or d.p) and M.get(sid, 'rerun') then -- a retried item: resume, not restart
    M.del(sid, 'rerun')
    M.rerun(sid)
    return
  end
  if d.k == 'task' then
    M.emit(sid, M.payload(inl, own, ret, err))
    return
  end
  local kw = M.get(sid, 'kwargs')
  local context = M.join(M.context_above(sid), kw)
  if context ~= '' then M.set(sid, 'context', context) end
  local input = M.join(M.join(inl, kw), own)
  M.activate(sid)
  M.set(sid, 'started', M.NOW_S)
  M.set(sid, 'input', input)
  if ret then M.set(sid, 'input_ret', ret) end
  if err then M.set(sid, 'input_err', err) end
  if d.k == 'chain' then
    M.refresh(sid)
    M.set(sid, 'step', 0)
    local first = M.step_at(sid, 0)
    if first == nil then
      M.settle(sid, true, ret or 'null', nil)
    else
      M.start_node(first, input, nil, ret, err)
    end
  elseif d.k == 'graph' then
    M.graph_start(sid)
  elseif d.k == 'branch' then
    M.start_node(d.sl, input, nil, ret, err)
  else
    M.queue_unqueued(sid)
    M.fill(sid)
    M.maybe_complete(sid)
  end
end

-- Chain c reacts to its step sid ending: next step, or the chain settles.
M.CHAIN_FIELDS = { { 'outcome', 'step', 'context', 'input' } }
function M.chain_step_done(c, sid, ok, val)
  if M.node_fields(c).step == nil then M.prefetch(c, M.CHAIN_FIELDS) end
  M.refresh(c)
  if M.TERMINAL[M.get(c, 'status')] or M.get(c, 'outcome') then return end
  local cur = tonumber(M.get(c, 'step') or '0')
  if M.step_at(c, cur) ~= sid then return end
  local nxt = ok and M.step_at(c, cur + 1)
  if not ok then
    M.settle(c, false, val, M.get(c, 'input'))
  elseif nxt then
    -- what its start reads (a task's message, a rerun mark), in one read
    if M.node_fields(nxt).sent == nil then M.prefetch(nxt, M.NEXT_FIELDS, true) end
    M.set(c, 'step', cur + 1)
    M.events[#M.events + 1] = cjson.encode({ 'advanced', c, nxt })
    M.start_node(nxt, M.get(c, 'context'), nil, val, nil)
  else
    M.settle(c, true, val, nil)
  end
end

function M.error_summary(val)
  local decoded, e = pcall(cjson.decode, val)
  if decoded and type(e) == 'table' then
    return tostring(e.type) .. ': ' .. tostring(e.message)
  end
  return tostring(val)
end

-- Swarm s reacts to item sid ending: free its slot, count it, fail on the budget, refill.
function M.swarm_item_done(s, sid, ok, val)
  if M.node_fields(s).lazy == nil then M.prefetch(s, M.SWARM_FIELDS) end
  if redis.call('SREM', M.aux('running', s), sid) == 1 then M.incr(s, 'n_running', -1) end
  M.incr(s, 'n_ended', 1)
  M.events[#M.events + 1] = M.event_text('item', s, sid, ok and 'done' or 'failed')
  local nf = tonumber(M.get(s, 'n_failed') or '0')
  if not ok then nf = M.incr(s, 'n_failed', 1) end
  if M.TERMINAL[M.get(s, 'status')] or M.get(s, 'outcome') then return end
  local d = M.def(s)
  if not ok and d.sa ~= nil and nf >= d.sa then
    redis.call('DEL', M.aux('queue', s))
    M.drop_lazy(s)
    local msg = string.format('%d item(s) failed (stop_after_n_failures=%d); last: %s',
      nf, d.sa, M.error_summary(val))
    M.settle(s, false, cjson.encode({ type = 'SwarmFailed', message = msg }), M.get(s, 'input'))
    return
  end
  M.fill(s)
  M.maybe_complete(s)
end

-- Node sid ended (ok: val is its result; else its error, inl the input it failed on).
-- Held itself: only the outcome is recorded. Under a held ancestor: it ends, what
-- follows waits. Canceled workflow: it ends, nothing follows.
M.settle = function(sid, ok, val, inl)
  if ok then M.set(sid, 'result', val) else M.set(sid, 'error', val) end
  local why, at = M.blocker(sid)
  if why == 'hold' and at == sid then
    M.set(sid, 'outcome', ok and 'done' or 'failed')
    M.hold(sid, { 'settle', sid, inl or '' })
    return
  end
  local d = M.def(sid)
  M.set(sid, 'status', ok and 'done' or 'failed')
  M.set(sid, 'ended', M.NOW_S)
  if sid == M.ROOT then M.stat(ok and 'w:done' or 'w:failed', 1) end
  M.events[#M.events + 1] = M.event_text(ok and 'done' or 'failed', sid, d.k, M.get(sid, 'started') or M.NOW_S)
  if M.get(sid, 'waited') then redis.call('PUBLISH', M.H .. ':done', sid) end
  if why == 'canceled' then return end
  if why == 'hold' then
    M.pause(sid)
    M.hold(at, { 'after', sid, inl or '' })
    return
  end
  M.after(sid, inl)
end

-- Task t's returned workflow settled: t settles with its outcome (t's callbacks, then
-- t's parent). A failure is reported on the input t ran with.
M.continuation_done = function(t, ok, val)
  if M.TERMINAL[M.get(t, 'status')] or M.get(t, 'outcome') then return end
  M.settle(t, ok, val, M.get(t, 'input'))
end

-- What follows an ended node: its callbacks, then its parent's advancement.
M.after = function(sid, inl)
  local d = M.def(sid)
  local ok = M.get(sid, 'status') == 'done'
  local val
  if ok then
    val = M.get(sid, 'result') or 'null'
    for _, cb in ipairs(d.ok or {}) do M.start_node(cb, M.context_above(cb), nil, val, nil) end
  else
    val = M.get(sid, 'error') or 'null'
    if M.get(sid, 'status') ~= 'canceled' then -- a canceled node's own callbacks never fire
      for _, cb in ipairs(d.err or {}) do M.start_node(cb, inl, nil, nil, val) end
    end
  end
  if d.p then
    local pk = M.def(d.p).k
    if pk == 'chain' then
      M.chain_step_done(d.p, sid, ok, val)
    elseif pk == 'task' then
      M.continuation_done(d.p, ok, val)
    elseif pk == 'graph' then
      M.graph_node_done(d.p, sid, ok, val)
    elseif pk == 'branch' then
      M.branch_child_done(d.p, sid, ok, val)
    else
      M.swarm_item_done(d.p, sid, ok, val)
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
function M.outcome_value(x)
  if M.get(x, 'status') == 'done' then return M.get(x, 'result') or 'null' end
  return '{"mageflow_error":' .. (M.get(x, 'error') or 'null') .. '}'
end

-- A JSON object of the outcomes of nodes xs, keyed by their names in the graph.
function M.keyed_outcomes(xs)
  local parts = {}
  for _, x in ipairs(xs) do
    parts[#parts + 1] = cjson.encode(M.def(x).gn) .. ':' .. M.outcome_value(x)
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

function M.dependencies(d)
  local all = {}
  for _, x in ipairs(d.rq or {}) do all[#all + 1] = x end
  for _, x in ipairs(d.oq or {}) do all[#all + 1] = x end
  return all
end

-- Graph g's ready node x takes its slot: the graph's messages, and as the previous result
-- its dependencies' outcomes keyed by name (a node without dependencies: what the graph
-- itself was started with).
M.start_graph_node = function(g, x)
  local deps = M.dependencies(M.def(x))
  if #deps > 0 then
    M.start_node(x, M.get(g, 'input'), nil, M.keyed_outcomes(deps), nil)
  else
    M.start_node(x, M.get(g, 'input'), nil, M.get(g, 'input_ret'), M.get(g, 'input_err'))
  end
end

-- Node x of graph g is ready: on the queue, once.
function M.ready(g, x)
  local st = M.get(x, 'status')
  -- a node canceled before it started is queued too: it counts when it would start
  if (st == 'pending' or st == 'canceled') and not M.get(x, 'queued') then
    M.set(x, 'queued', '1')
    M.enqueue(g, x)
  end
end

-- One more dependency of node x finished.
function M.release(g, x)
  if M.incr(x, 'n_deps', -1) <= 0 then M.ready(g, x) end
end

-- Node x never runs: skipped, with why (its callbacks do not fire).
function M.skip(x, why)
  M.set(x, 'status', 'skipped')
  M.set(x, 'error', cjson.encode({ type = 'Skipped', message = why }))
  M.set(x, 'ended', M.NOW_S)
  M.events[#M.events + 1] = cjson.encode({ 'skipped', x, M.def(x).k, M.NOW_S })
  if M.get(x, 'waited') then redis.call('PUBLISH', M.H .. ':done', x) end
end

-- Node failed of graph g did not succeed: every node that requires it (transitively) is
-- skipped; the optional dependents of a skipped node count it as finished.
-- O(the skipped subgraph and its out-edges).
function M.skip_dependents(g, failed)
  local stack = { failed }
  while #stack > 0 do
    local cur = table.remove(stack)
    local d = M.def(cur)
    for _, y in ipairs(d.rd or {}) do
      if M.get(y, 'status') == 'pending' and not M.get(y, 'queued') then
        M.skip(y, 'required dependency ' .. cjson.encode(d.gn) .. ' did not succeed')
        M.incr(g, 'n_ended', 1)
        stack[#stack + 1] = y
      end
    end
    if cur ~= failed then
      for _, y in ipairs(d.od or {}) do M.release(g, y) end
    end
  end
end

-- Graph g starts: its sources (nodes without dependencies) are ready.
M.graph_start = function(g)
  for _, x in ipairs(redis.call('LRANGE', M.aux('sources', g), 0, -1)) do M.ready(g, x) end
  M.fill(g)
  M.graph_maybe_complete(g)
end

-- Settle a started graph once every node ended: the sink outcomes keyed by name.
M.graph_maybe_complete = function(g)
  if M.get(g, 'sent') == nil or M.TERMINAL[M.get(g, 'status')] or M.get(g, 'outcome') then return end
  if tonumber(M.get(g, 'n_ended') or '0') < redis.call('LLEN', M.aux('nodes', g)) then return end
  M.settle(g, true, M.keyed_outcomes(redis.call('LRANGE', M.aux('sinks', g), 0, -1)), nil)
end

-- Graph g reacts to node sid ending: free its slot, skip what required it, count a
-- failure nobody tolerates against the budget, release the dependents, refill.
M.graph_node_done = function(g, sid, ok, val)
  if redis.call('SREM', M.aux('running', g), sid) == 1 then M.incr(g, 'n_running', -1) end
  M.incr(g, 'n_ended', 1)
  if M.TERMINAL[M.get(g, 'status')] or M.get(g, 'outcome') then return end
  local d, gd = M.def(sid), M.def(g)
  if not ok then
    M.skip_dependents(g, sid)
    -- tolerated: it has dependents and every one of them declared it optional
    local tolerated = d.od ~= nil and #d.od > 0 and (d.rd == nil or #d.rd == 0)
    if not tolerated then
      local nf = M.incr(g, 'n_failed', 1)
      if gd.sa ~= nil and nf >= gd.sa then
        redis.call('DEL', M.aux('queue', g))
        local msg = string.format('%d node(s) failed (stop_after_n_failures=%d); last: %s: %s',
          nf, gd.sa, tostring(d.gn), M.error_summary(val))
        M.settle(g, false, cjson.encode({ type = 'GraphFailed', message = msg }), M.get(g, 'input'))
        return
      end
    end
  else
    for _, y in ipairs(d.rd or {}) do M.release(g, y) end
  end
  for _, y in ipairs(d.od or {}) do M.release(g, y) end
  M.fill(g)
  M.graph_maybe_complete(g)
end

-- Branches. A branch runs its selector (sl); the selector's result names the case (cs:
-- case key -> sid, df: the default) that runs next, recorded in `chosen`; the others end
-- skipped. The branch's result is the chosen case's.

-- Every child of branch definition d: the selector, the cases, the default.
function M.branch_children(d)
  local kids = { d.sl }
  for _, x in pairs(d.cs or {}) do kids[#kids + 1] = x end
  if d.df then kids[#kids + 1] = d.df end
  table.sort(kids)
  return kids
end

-- The case key a selector result names: a JSON string's text, else the JSON text itself.
function M.case_key(val)
  if string.sub(val, 1, 1) == '"' then
    local decoded, s = pcall(cjson.decode, val)
    if decoded and type(s) == 'string' then return s end
  end
  return val
end

M.branch_child_done = function(b, sid, ok, val)
  if M.TERMINAL[M.get(b, 'status')] or M.get(b, 'outcome') then return end
  local d = M.def(b)
  if sid ~= d.sl then
    if sid == M.get(b, 'chosen') then M.settle(b, ok, val, M.get(b, 'input')) end
    return
  end
  local pick = ok and ((d.cs or {})[M.case_key(val)] or d.df) or nil
  for _, x in ipairs(M.branch_children(d)) do
    if x ~= d.sl and x ~= pick and M.get(x, 'status') == 'pending' then
      M.skip(x, ok and 'another case was chosen' or 'the selector failed')
    end
  end
  if not ok then
    M.settle(b, false, val, M.get(b, 'input'))
  elseif pick == nil then
    local msg = 'the selector returned ' .. val .. ', which names no case, and there is no default'
    M.settle(b, false, cjson.encode({ type = 'NoBranchMatched', message = msg }), M.get(b, 'input'))
  else
    M.set(b, 'chosen', pick)
    M.start_node(pick, M.get(b, 'input'), nil, val, nil)
  end
end

-- A canceled workflow's swarms under sid (as far as they started) queue and run nothing:
-- their queues and running sets go, so their counts show what is left.
function M.drop_queues(sid)
  local d = M.def(sid)
  if d.k == 'chain' then
    if M.get(sid, 'sent') and not M.TERMINAL[M.get(sid, 'status')] then
      local cur = M.step_at(sid, tonumber(M.get(sid, 'step') or '0'))
      if cur then M.drop_queues(cur) end
    end
  elseif d.k == 'swarm' or d.k == 'graph' then
    for _, it in ipairs(redis.call('SMEMBERS', M.aux('running', sid))) do M.drop_queues(it) end
    redis.call('DEL', M.aux('queue', sid), M.aux('running', sid))
    M.drop_lazy(sid)
    if M.get(sid, 'n_running') then M.set(sid, 'n_running', 0) end
    if M.get(sid, 'n_paused') then M.set(sid, 'n_paused', 0) end
  elseif d.k == 'branch' then
    local chosen = M.get(sid, 'chosen')
    if chosen then M.drop_queues(chosen) end
  else
    local c = M.get(sid, 'cont')
    if c then M.drop_queues(c) end
  end
end

-- Running tasks under sid go back to pending, held on `holder`; their run ids go to out.
function M.take_running(sid, holder, out)
  local d = M.def(sid)
  local c = d.k == 'task' and M.get(sid, 'cont')
  if c then
    if not M.TERMINAL[M.get(sid, 'status')] then M.take_running(c, holder, out) end
  elseif d.k == 'task' then
    local st = M.get(sid, 'status')
    local self_held = M.HOLDING[st] and M.get(sid, 'held_from') == 'active'
    if st == 'active' or self_held then
      out[#out + 1] = M.get(sid, 'run_id') or ''
      if self_held then M.set(sid, 'held_from', 'pending') else M.set(sid, 'status', 'pending') end
      M.del(sid, 'run_id')
      redis.call('SREM', M.INFLIGHT, sid)
      M.pause(sid)
      M.hold(holder, { 'pub', sid })
    end
  elseif d.k == 'chain' then
    if M.get(sid, 'sent') and not M.TERMINAL[M.get(sid, 'status')] then
      local cur = M.step_at(sid, tonumber(M.get(sid, 'step') or '0'))
      if cur then M.take_running(cur, holder, out) end
    end
  elseif d.k == 'branch' then
    if M.get(sid, 'sent') and not M.TERMINAL[M.get(sid, 'status')] then
      M.take_running(M.get(sid, 'chosen') or d.sl, holder, out)
    end
  else
    for _, it in ipairs(redis.call('SMEMBERS', M.aux('running', sid))) do
      M.take_running(it, holder, out)
    end
  end
end

-- Re-send task sid if it was dispatched and never started; later re-sends back off.
function M.resend(sid)
  local d = M.def(sid)
  local st = d and M.get(sid, 'status')
  if d == nil or d.k ~= 'task' or M.TERMINAL[st] or M.get(sid, 'outcome') or M.get(sid, 'run_id')
      or M.get(sid, 'sent') == nil then
    redis.call('ZREM', M.SENT, sid)
    return
  end
  local why, at = M.blocker(sid)
  if why == 'canceled' then
    redis.call('ZREM', M.SENT, sid)
  elseif why == 'hold' then
    redis.call('ZREM', M.SENT, sid)
    M.hold(at, { 'pub', sid })
  else
    local n = M.incr(sid, 'resends', 1)
    redis.call('ZADD', M.SENT, M.NOW + M.RESEND_AFTER * math.pow(2, math.min(n, 6)), sid)
    M.touched[M.SENT] = true
    M.send(sid, M.payload_of(sid), true)
  end
end

-- What a finished task's redelivery re-issues: its dispatches that never started.
function M.redo(sid)
  local owed = M.get(sid, 'owed')
  if owed then
    for _, x in ipairs(cjson.decode(owed)) do
      if redis.call('ZSCORE', M.SENT, x) ~= false then M.resend(x) end
    end
  end
  return '[' .. table.concat(M.pubs, ',') .. ']'
end

function M.encoded_pubs()
  return '[' .. table.concat(M.pubs, ',') .. ']'
end

function M.encoded_events()
  return '[' .. table.concat(M.events, ',') .. ']'
end

-- A transition's reply: what to publish, what happened, and when to look again (and
-- '1' when a swarm's result is part-assembled: the caller goes on with 'collect').
function M.transition_reply()
  return { 'ok', M.encoded_pubs(), M.encoded_events(), M.wake_at and string.format('%d', M.wake_at) or '',
    M.collect_more }
end

-- Start up to `limit` delayed nodes whose time has come.
function M.release_due(limit)
  for _, x in ipairs(redis.call('ZRANGEBYSCORE', M.DELAYED, '-inf', M.NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', M.DELAYED, x)
    local st = M.get(x, 'status')
    if M.def(x).k == 'task' then
      if not M.TERMINAL[st] and not M.get(x, 'outcome') and not M.get(x, 'run_id') then
        M.emit(x, M.payload_of(x))
      end
    else
      local a = cjson.decode(M.get(x, 'deferred') or '["","","",""]')
      M.del(x, 'deferred')
      if not M.TERMINAL[st] and M.blocker(x) ~= 'canceled' then
        local function opt(v) if v == '' then return nil end return v end
        M.start_node(x, a[1], opt(a[2]), opt(a[3]), opt(a[4]))
      end
    end
  end
end

-- Retry. A failed root runs again from its failure points: along failed nodes a task is
-- dispatched again with its payload, a chain resumes at its failed step, a swarm queues its
-- failed items and those its failure budget stopped. Done nodes keep their results.

-- Clear state fields fs of node sid (deleted at the end: see WRITE-BEHIND).
function M.del_fields(sid, fs)
  local t = M.node_fields(sid)
  for _, f in ipairs(fs) do
    if M.PACKED and M.REC[f] then
      M.del(sid, f)
    else
      M.write(sid .. ':' .. f, false)
      t[f] = false
    end
  end
end

M.OUTCOME_FIELDS = { 'result', 'error', 'outcome', 'ended', 'run_id', 'owed', 'resends' }
M.RUN_FIELDS = { 'held_from', 'sent', 'queued', 'qseq', 'started', 'ended', 'input',
  'input_ret', 'input_err', 'step', 'scanned', 'n_running', 'n_ended', 'n_failed', 'result',
  'error', 'outcome', 'run_id', 'payload', 'owed', 'resends', 'rerun', 'context', 'due',
  'deferred', 'cont', 'lazy', 'qend', 'qmid', 'qsa', 'qsb', 'ahead', 'beyond', 'pscan',
  'collected' }

-- Callback cb (and everything below it) back to never run, so it fires again. O(nodes
-- that ran); a node that never started has nothing below it that ran.
M.rearm = function(cb)
  if M.get(cb, 'sent') == nil and M.get(cb, 'queued') == nil then return end
  local d = M.def(cb)
  local c = M.get(cb, 'cont')
  local lazy = d.k == 'swarm' and M.get(cb, 'lazy') and tonumber(M.get(cb, 'qend') or '0')
  M.del_fields(cb, M.RUN_FIELDS)
  if c then M.rearm(c) end
  M.set(cb, 'status', 'pending')
  redis.call('DEL', M.aux('held', cb))
  if d.k == 'chain' then
    for _, x in ipairs(redis.call('LRANGE', M.aux('steps', cb), 0, -1)) do M.rearm(x) end
  elseif d.k == 'swarm' then
    for i, x in ipairs(redis.call('LRANGE', M.aux('items', cb), 0, -1)) do
      -- an item past the cursor that was canceled while queued: back to pending too
      if lazy and i <= lazy and M.get(x, 'status') == 'canceled' and not M.get(x, 'sent') then
        M.set(x, 'queued', '1')
      end
      if M.get(x, 'late') then M.del(x, 'late') end -- its swarm starts afresh
      M.rearm(x)
    end
    redis.call('DEL', M.aux('queue', cb), M.aux('running', cb), M.aux('result', cb))
    redis.call('ZREM', M.COLLECT, cb)
  elseif d.k == 'graph' then
    for _, x in ipairs(redis.call('LRANGE', M.aux('nodes', cb), 0, -1)) do
      M.rearm(x)
      if M.def(x).rq or M.def(x).oq then M.set(x, 'n_deps', #M.dependencies(M.def(x))) end
    end
    redis.call('DEL', M.aux('queue', cb), M.aux('running', cb))
  elseif d.k == 'branch' then
    M.del(cb, 'chosen')
    for _, x in ipairs(M.branch_children(d)) do M.rearm(x) end
  end
  for _, x in ipairs(d.ok or {}) do M.rearm(x) end
  for _, x in ipairs(d.err or {}) do M.rearm(x) end
end

-- Failed node sid may run again: pending, outcome cleared (attempts and the first start
-- stay), its error callbacks re-armed.
function M.reopen(sid)
  M.set(sid, 'status', 'pending')
  M.del_fields(sid, M.OUTCOME_FIELDS)
  for _, cb in ipairs(M.def(sid).err or {}) do M.rearm(cb) end
end

-- Failed node x of a swarm or graph will be queued again: a task starts afresh from the
-- queue (no 'sent': a stale copy of its failed run is dropped); a composite resumes from
-- its failure point once it has a slot.
function M.reopen_queued(x)
  M.reopen(x)
  if M.def(x).k == 'task' and not M.get(x, 'cont') then M.del(x, 'sent') else M.set(x, 'rerun', '1') end
end

-- Failed swarm s queues again its failed items and the queued ones that never started
-- (the failure budget emptied the queue), in item order, on the zset; the cursor then
-- stands past the last item. Counters then count the done items only.
-- O(items): retry is an operator's command, never a per-event op.
function M.requeue(s)
  local lazy = M.get(s, 'lazy') ~= nil
  local qend = tonumber(M.get(s, 'qend') or '0')
  local ended = 0
  for i, it in ipairs(redis.call('LRANGE', M.aux('items', s), 0, -1)) do
    local st = M.get(it, 'status')
    if st == 'done' then
      ended = ended + 1
    elseif st == 'failed' then
      M.reopen_queued(it)
      if not M.get(it, 'queued') then M.set(it, 'queued', '1') end
      M.enqueue(s, it)
    elseif st == 'canceled' then -- an operator canceled it: it runs again from the start
      M.rearm(it)
      M.set(it, 'status', 'pending')
      M.set(it, 'queued', '1')
      M.enqueue(s, it)
    elseif M.get(it, 'sent') == nil and (M.get(it, 'queued') or (lazy and i <= qend)) then
      if not M.get(it, 'queued') then M.set(it, 'queued', '1') end
      M.enqueue(s, it)
    end
  end
  M.set(s, 'n_ended', ended)
  M.set(s, 'n_failed', 0)
  if lazy then -- every item up to qend that waits is on the zset now
    M.set(s, 'lazy', '1')
    M.set(s, 'scanned', qend)
    M.set(s, 'ahead', 0)
  end
  if M.get(s, 'closed') == '1' then M.queue_unqueued(s) end
end

-- Canceled node sid (a chain step, a branch's selector or case, a returned workflow; a
-- swarm item or graph node is queued again by its parent's retry) back to never run,
-- started again with what its parent gives it.
function M.restart(sid)
  local d = M.def(sid)
  M.rearm(sid)
  M.set(sid, 'status', 'pending')
  local pd = d.p and M.def(d.p)
  if pd == nil then return end
  if pd.k == 'chain' then
    local cur = tonumber(M.get(d.p, 'step') or '0')
    if cur == 0 then
      M.start_node(sid, M.get(d.p, 'input'), nil, M.get(d.p, 'input_ret'), M.get(d.p, 'input_err'))
    else
      M.start_node(sid, M.get(d.p, 'context'), nil, M.get(M.step_at(d.p, cur - 1), 'result'), nil)
    end
  elseif pd.k == 'task' then
    M.start_node(sid, M.context_above(sid), nil, nil, nil)
  elseif pd.k == 'branch' and sid == pd.sl then
    M.start_node(sid, M.get(d.p, 'input'), nil, M.get(d.p, 'input_ret'), M.get(d.p, 'input_err'))
  elseif pd.k == 'branch' then
    M.start_node(sid, M.get(d.p, 'input'), nil, M.get(pd.sl, 'result'), nil)
  end -- a graph node is queued again by graph_requeue
end

-- Failed graph g runs again: failed nodes re-run from their failure points, skipped ones
-- wait again, pending counters are recounted (dependencies not done) and the ready nodes
-- queued. O(nodes + edges): retry is an operator's command, never a per-event op.
function M.graph_requeue(g)
  local nodes = redis.call('LRANGE', M.aux('nodes', g), 0, -1)
  redis.call('DEL', M.aux('queue', g))
  local ended = 0
  for _, x in ipairs(nodes) do
    local st = M.get(x, 'status')
    if st == 'done' then
      ended = ended + 1
    elseif st == 'failed' then
      M.reopen_queued(x)
      M.del(x, 'queued')
    elseif st == 'skipped' then
      M.set(x, 'status', 'pending')
      M.del_fields(x, { 'error', 'ended', 'queued' })
    elseif st == 'canceled' then -- an operator canceled it: it runs again from the start
      M.rearm(x)
      M.set(x, 'status', 'pending')
      M.del(x, 'queued')
    elseif M.get(x, 'queued') and M.get(x, 'sent') == nil then
      M.del(x, 'queued') -- the budget emptied the queue it was on
    end
  end
  for _, x in ipairs(nodes) do
    if M.get(x, 'status') == 'pending' and (M.get(x, 'sent') == nil or M.get(x, 'rerun')) then
      local waiting = 0
      for _, y in ipairs(M.dependencies(M.def(x))) do
        if M.get(y, 'status') ~= 'done' then waiting = waiting + 1 end
      end
      M.set(x, 'n_deps', waiting)
      if waiting == 0 then M.ready(g, x) end
    end
  end
  M.set(g, 'n_ended', ended)
  M.set(g, 'n_failed', 0)
  M.set(g, 'n_running', redis.call('SCARD', M.aux('running', g)))
end

-- Failed branch b runs again: its failed case, or (the selector failed or named no case)
-- the selector, with the cases waiting again.
function M.branch_rerun(b)
  local d = M.def(b)
  local chosen = M.get(b, 'chosen')
  if chosen then
    M.rerun(chosen)
    return
  end
  for _, x in ipairs(M.branch_children(d)) do
    if M.get(x, 'status') == 'skipped' then
      M.set(x, 'status', 'pending')
      M.del_fields(x, { 'error', 'ended' })
    end
  end
  local sst = M.get(d.sl, 'status')
  if sst == 'failed' or sst == 'canceled' then
    M.rerun(d.sl)
  else
    M.reopen(d.sl)
    M.start_node(d.sl, M.get(b, 'input'), nil, M.get(b, 'input_ret'), M.get(b, 'input_err'))
  end
end

-- Re-run node sid from its failure point (sid failed, or is a composite item marked rerun).
M.rerun = function(sid)
  local d = M.def(sid)
  if M.get(sid, 'status') == 'canceled' then
    M.restart(sid)
    return
  end
  local c = d.k == 'task' and M.get(sid, 'cont')
  M.reopen(sid)
  if c then -- its returned workflow failed: that resumes, the task does not run again
    M.set(sid, 'status', 'active')
    M.rerun(c)
  elseif d.k == 'task' then
    M.set(sid, 'sent', M.NOW_S)
    M.emit(sid, M.payload_of(sid))
  elseif d.k == 'chain' then
    M.activate(sid)
    M.refresh(sid)
    M.rerun(M.step_at(sid, tonumber(M.get(sid, 'step') or '0')))
  elseif d.k == 'graph' then
    M.activate(sid)
    M.graph_requeue(sid)
    M.fill(sid)
    M.graph_maybe_complete(sid)
  elseif d.k == 'branch' then
    M.activate(sid)
    M.branch_rerun(sid)
  else -- a swarm (a new composite kind needs its own branch here)
    M.activate(sid)
    M.requeue(sid)
    M.fill(sid)
    M.maybe_complete(sid)
  end
end

-- Is task x, dispatched or running, part of an error callback of a failed node? Retry
-- would re-arm that callback under it. (Items a stopped swarm let run are not: they
-- keep their slots and count once they end.)
function M.in_failed_callback(x)
  if M.TERMINAL[M.get(x, 'status')] then return false end
  local d = M.def(x)
  while d do
    if d.of and M.get(d.of, 'status') == 'failed' then return true end
    d = M.up(d) and M.def(M.up(d))
  end
  return false
end

-- Any dispatched or running task inside an error callback of a failed node.
-- O(dispatched + running tasks).
function M.callbacks_busy()
  for _, x in ipairs(redis.call('ZRANGE', M.SENT, 0, -1)) do
    if M.in_failed_callback(x) then return true end
  end
  for _, x in ipairs(redis.call('SMEMBERS', M.INFLIGHT)) do
    if M.in_failed_callback(x) then return true end
  end
  for _, x in ipairs(redis.call('ZRANGE', M.DELAYED, 0, -1)) do
    if M.in_failed_callback(x) then return true end
  end
  return false
end

-- Does definition JSON raw make a plain task without callbacks? Such a node has no keys
-- of its own but a held list (H:holders reaches it). Read without decoding; a name that
-- looks like a callback key only makes it answer no (the node is then walked).
function M.plain_task(raw)
  return string.sub(raw, 1, 11) == '{"k":"task"' and not string.find(raw, '"ok"', 1, true)
    and not string.find(raw, '"err"', 1, true)
end

-- The root's finishing call gives every key of the workflow the finished TTL, not only
-- those it touched: a nested swarm's lists, the steps of a chain never started, held lists.
-- It walks the tree but for the items of a `flat` swarm, which own no keys but held lists,
-- and those are reached through H:holders: O(nodes walked + holders), once per workflow.
-- A walked node's held list is expired too (one written by an older version, which did
-- not record H:holders).
function M.expire_everything(ttl)
  for _, k in ipairs(M.workflow_keys()) do redis.call('EXPIRE', k, ttl) end
  for _, x in ipairs(redis.call('SMEMBERS', M.H .. ':holders')) do redis.call('EXPIRE', M.H .. ':held:' .. x, ttl) end
  local stack = redis.call('SMEMBERS', M.CONTS)
  stack[#stack + 1] = M.ROOT
  while #stack > 0 do
    local sid = table.remove(stack)
    local raw = M.defs[sid] == nil and redis.call('HGET', M.H, sid)
    local d = not (raw and M.plain_task(raw)) and M.def(sid) -- a plain task is not decoded
    for _, k in ipairs(M.node_keys(sid, d)) do redis.call('EXPIRE', k, ttl) end
    if d then
      local kids = {}
      if d.k == 'chain' then
        kids = redis.call('LRANGE', M.H .. ':steps:' .. sid, 0, -1)
      elseif d.k == 'swarm' then
        if M.get(sid, 'flat') ~= '1' then kids = redis.call('LRANGE', M.H .. ':items:' .. sid, 0, -1) end
      elseif d.k == 'graph' then
        kids = redis.call('LRANGE', M.H .. ':nodes:' .. sid, 0, -1)
      elseif d.k == 'branch' then
        kids = M.branch_children(d)
      end
      for _, list in ipairs({ kids, d.ok or {}, d.err or {} }) do
        for _, x in ipairs(list) do stack[#stack + 1] = x end
      end
    end
  end
end



-- A delivery of task sid under run rid, as task `name`, arrived: run it, or say why not
-- (the start op's reply). lease_ms: how long the attempt that runs holds the task. ran:
-- the user code already ran (a first delivery run before its start, see the finish op):
-- a hold then lets it be taken and settled under the hold instead of holding a publish,
-- and a task this run already took is 'taken'. began: a first delivery's start is as
-- of then (ms text, see M.began), not now.
function M.start_task(sid, rid, name, lease_ms, ran, began)
  local d = M.def(sid)
  if d == nil or d.k ~= 'task' then return { 'missing' } end
  if name ~= nil and d.t ~= name then return { 'mismatch', d.t } end
  local st = M.get(sid, 'status')
  local cur = M.get(sid, 'run_id')
  local running = st == 'active' or M.get(sid, 'held_from') == 'active'
  if st == 'canceled' then return { 'dropped' } end
  if M.TERMINAL[st] or M.get(sid, 'outcome') or M.get(sid, 'cont') then
    if cur == rid then return { 'redo', M.redo(sid) } end
    return { 'dup' }
  end
  if ran and cur == rid and running then return { 'taken' } end
  if cur == rid and running and tonumber(M.get(sid, 'lease') or '0') > M.NOW then
    -- a copy of a run whose attempt still holds its lease: it must not run user code
    return { 'leased', M.get(sid, 'lease') }
  end
  if cur and cur ~= rid and running then return { 'dup' } end
  if M.get(sid, 'sent') == nil then return { 'dropped' } end
  local was_sent = redis.call('ZREM', M.SENT, sid) == 1
  local why, at = M.blocker(sid)
  if why == 'canceled' then return { 'dropped' } end
  if why == 'hold' and not ran then
    if not (was_sent or cur == rid) then return { 'dup' } end
    if cur then
      M.del(sid, 'run_id')
      redis.call('SREM', M.INFLIGHT, sid)
      if st == 'active' then M.set(sid, 'status', 'pending') else M.set(sid, 'held_from', 'pending') end
    end
    M.pause(sid)
    M.hold(at, { 'pub', sid })
    return { 'held' }
  end
  M.note_ms = began -- a first delivery's run started when its user code began
  if M.HOLDING[st] then M.set(sid, 'held_from', 'active') else M.set(sid, 'status', 'active') end
  M.note_ms = nil
  M.set(sid, 'run_id', rid)
  M.unpause(sid)
  if not ran then -- taken by its finish, which ends it in the same call: never in flight
    redis.call('SADD', M.INFLIGHT, sid)
    M.touched[M.INFLIGHT] = true
  end
  if not M.get(sid, 'started') then M.set(sid, 'started', began or M.NOW_S) end
  local a = M.incr(sid, 'attempts', 1)
  M.stat('t:' .. d.t .. ':started', 1)
  if a > 1 then M.stat('t:' .. d.t .. ':retried', 1) end
  if a > 1 then M.note(sid, 'retried', a) end
  if lease_ms then M.set(sid, 'lease', M.NOW + lease_ms) end
  if ran then return { 'run' } end -- its finish, which needs no message
  return { 'run', M.get(sid, 'kwargs') or '{}', tostring(a), M.get(sid, 'idents') or '{}' }
end

-- The state of one call, set afresh by every call (the definitions above are shared).
function M.begin(KEYS, ARGV)
  M.H = KEYS[1]
  M.OP = ARGV[1]
  M.NOW_S = ARGV[2]
  M.NOW = tonumber(ARGV[2])
  M.TTL_ACTIVE = ARGV[3] -- TTLs stay text: they are only ever EXPIRE arguments
  M.REFRESH_MS = math.min(60000, tonumber(M.TTL_ACTIVE) * 125) -- an eighth of it, a minute at most
  M.TTL_DONE = ARGV[4]
  M.RESEND_AFTER = tonumber(ARGV[5])
  M.DELIVERY = ARGV[6]
  M.SENT = M.H .. ':sent'
  M.INFLIGHT = M.H .. ':inflight'
  M.DELAYED = M.H .. ':delayed'
  M.CONTS = M.H .. ':conts'
  M.pubs = {}     -- specs to publish: [task, sid, payload(, priority, not-before ms)]
  M.wake_at = nil -- earliest time this call made a node wait for (the live index must know)
  M.sent_now = {} -- sids this call dispatched
  M.events = {}   -- observer events
  M.touched = {}  -- auxiliary keys written, whose TTL is refreshed at the end
  M.defs = {}     -- decoded definitions, at most one decode per sid per call
  M.filling = {}  -- swarms whose fill loop is running (re-entry returns at once)
  M.fields = {}   -- sid -> { field -> value read or written in this call (false: absent) }
  M.raw_defs = {} -- sid -> its definition's text, read ahead by prefetch (false: none)
  M.EVENTS = M.H .. ':events'
  M.stream = {}
  M.STATS = KEYS[2]
  M.stat_sums, M.stat_list = {}, {} -- statistics fields this call adds to, and by how much
  M.WF = string.match(M.H, '{([^{}]*)}$')
  M.delivered = {} -- sids whose message this call appended itself
  M.window = {}        -- swarm -> { index of its first item, items } read in this call
  M.COLLECT = M.H .. ':collect'
  M.collecting = {}     -- swarms this call assembled a part of (one part per call)
  M.collect_more = nil  -- '1': this call left a swarm's result part-assembled
  M.result = nil
  M.final_ttl = nil
  M.queue_top = nil -- the root swarm's queue zset's first entry, as lean finishes read it
  M.acks = {} -- { stream, group, entry id } of deliveries acknowledged once the call wrote everything
  M.note_ms = nil -- see M.note
  M.PACKED = false -- the workflow keeps run records (see RUN RECORD); read in main
  M.dirty, M.dirty_list = {}, {} -- nodes whose run record this call changed
  M.writes, M.write_list = {}, {} -- fields this call changed (see WRITE-BEHIND)
  M.refreshed = {} -- nodes whose keys' refresh this call decided (see KEY LIFETIMES)
  M.due = {}       -- the nodes among them whose keys it refreshes
end

-- LEAN FINISH. Most finishes are one and the same transition: the first delivery (see
-- FIRST DELIVERIES) of an item of a root swarm succeeded while nothing is held, and its
-- slot goes to the item at the swarm's cursor, or to none. lean_finish makes exactly the
-- changes the general path (start_task, settle, after, swarm_item_done, fill, dequeue)
-- makes for it, without that path's walks and checks, once it has checked, on what the
-- general path reads first, that the finish is that case whichever the running set's
-- answer. Anything else (a redelivery, a failure, callbacks, a delay, an item first in
-- the queue by priority, items to skip, more than one slot free, the swarm's completion)
-- returns nil before it changes anything, and the general path runs. The same writes go
-- through this call's copy (M.fields, M.write, M.touch_rec), so a later finish of the
-- same call reads them. tests/core/test_batch_equivalence.py holds it to the general
-- path (M.LEAN off) byte for byte.
M.LEAN = true
function M.lean_finish(sid, val, first, began)
  local s = M.ROOT
  if not M.PACKED or M.item_swarm(sid) ~= s then return nil end
  local t = M.fields[sid]
  if t.status ~= 'pending' or not t.sent or t.run_id or t.started or t.attempts or t.ended
      or t.held_from or t.outcome or t.cont or t.lease or t.paused or t.waited then return nil end
  local d = M.def(sid)
  if d == nil or d.k ~= 'task' or d.p ~= s or d.ok or d.err then return nil end
  local sd = M.def(s)
  if sd == nil or sd.k ~= 'swarm' then return nil end
  local st = M.fields[s]
  if st.lazy == nil then M.prefetch(s, M.SWARM_FIELDS) end
  if st.status ~= 'active' or st.outcome or st.lazy ~= '1' or not st.sent then return nil end
  local mc = sd.mc
  local n = tonumber(st.n_running or '0')
  local c, stop = tonumber(st.scanned or '0'), tonumber(st.qend or '0')
  -- the fill that follows dequeues when a slot is free: with sid in the running set
  -- (n - 1 left running) or not (n)
  local take_in, take_out = mc == nil or n - 1 < mc, mc == nil or n < mc
  local x = nil
  if take_in or take_out then
    -- read once per run of lean finishes in a call: they leave the queue zset as it is
    local top = M.queue_top
    if top == nil then
      top = redis.call('ZRANGE', M.aux('queue', s), 0, 0, 'WITHSCORES')
      M.queue_top = top
    end
    if c < stop then -- the cursor's item, taken as it is, and then the swarm is full
      x = M.item_at(s, c, stop)
      local tx = M.fields[x]
      if tx.queued or tx.sent or tx.status ~= 'pending' or tx.rerun then return nil end
      local xd = M.def(x)
      if xd == nil or xd.k ~= 'task' or xd.p ~= s or xd.dl or xd.at or xd.nd then return nil end
      local seq = c < tonumber(st.qmid or '0') and st.qsa or st.qsb
      if top[1] ~= nil and tonumber(top[2]) <= M.PRIORITY_MAX * M.SEQ_SPAN + tonumber(seq or '0') then
        return nil
      end
      if mc == nil or (take_in and n < mc) or (take_out and n + 1 < mc) then return nil end
    elseif top[1] ~= nil then
      return nil
    end
  end
  -- its completion is the general path's: qend is the length of H:items at some time
  -- and the list only grows, so before it nothing completes (no LLEN needed)
  if st.closed == '1' and tonumber(st.n_ended or '0') + 1 >= stop then return nil end
  -- its start (start_task, taken by the finish; its ZREM from H:sent follows the next
  -- item's ZADD, so that a ZADD that created the key is known)
  M.note_ms = began
  M.note(sid, 'started', 0, 'active')
  M.note_ms = nil
  M.stat('t:' .. d.t .. ':started', 1)
  t.run_id, t.started, t.attempts = first, began, '1'
  -- its end (settle)
  M.stat_finished(sid, true)
  M.put(sid, 'result', val)
  t.status, t.ended = 'done', M.NOW_S
  M.touch_rec(sid)
  M.note(sid, 'done', 0, 'done')
  M.events[#M.events + 1] = M.event_text('done', sid, 'task', began)
  -- its swarm (swarm_item_done, fill)
  if redis.call('SREM', M.aux('running', s), sid) == 1 then
    n = n - 1
    M.put(s, 'n_running', n)
  end
  M.put(s, 'n_ended', tonumber(st.n_ended or '0') + 1)
  M.events[#M.events + 1] = M.event_text('item', s, sid, 'done')
  local took = x and (mc == nil or n < mc)
  if took then
    M.put(s, 'scanned', c + 1)
    M.put(s, 'n_running', n + 1)
    -- n_running counts the running set's members: with some left, SADD creates no key
    local running = M.aux('running', s)
    redis.call('SADD', running, x)
    if n == 0 then M.touched[running] = true end
    M.fields[x].sent = M.NOW_S
    M.touch_rec(x)
    M.send(x, M.payload(st.input, M.fields[x].own, st.input_ret, st.input_err))
    M.sent_now[#M.sent_now + 1] = x
    redis.call('ZADD', M.SENT, M.NOW + M.RESEND_AFTER, x)
  end
  -- sid was on H:sent (dispatched, not started): then the ZADD above created no key
  if redis.call('ZREM', M.SENT, sid) == 0 and took then M.touched[M.SENT] = true end
  M.record_owed(sid)
  return M.transition_reply()
end

-- Task sid ended: ok with result val, or for good with error val on input inp.
-- first ('' for none): the run id of a first delivery whose user code ran without a start
-- transition (the worker trusted its message: see FIRST DELIVERIES); the start is taken
-- here, in the same call, as of began (ms its user code began, by the caller's clock, as
-- now is; '' or later than now: now), and a delivery the start would have refused (a
-- copy, a canceled workflow) changes nothing. stream, group, entry ('' for none): the delivery, an entry of
-- a stream on this server: acknowledged and deleted at the end of the call, whatever it
-- replies (the worker then sends no XACK/XDEL of its own).
function M.finish_task(sid, ok, val, inp, first, began, stream, group, entry)
  if first == '' then first = nil end
  if entry ~= '' then M.acks[#M.acks + 1] = { stream, group, entry } end
  M.prefetch(sid, M.ENDING_FIELDS, true)
  if first then began = M.began(began) end
  if ok and first and M.LEAN then
    local reply = M.lean_finish(sid, val, first, began)
    if reply then return reply end
  end
  -- the general path may take the queue's first entry (entries are added by client ops
  -- only, so a stale one would only send a lean finish the general way): read it again
  M.queue_top = nil
  local d = M.def(sid)
  local taken = { 'run' }
  if first and d and d.k == 'task' then
    taken = M.start_task(sid, first, nil, nil, true, began)
  end
  if d == nil or d.k ~= 'task' then
    return { 'missing' }
  elseif taken[1] == 'redo' then
    return { 'dup', taken[2] }
  elseif taken[1] ~= 'run' and taken[1] ~= 'taken' then
    return { 'dup', '[]' }
  elseif M.TERMINAL[M.get(sid, 'status')] or M.get(sid, 'outcome') or M.get(sid, 'cont') then
    return { 'dup', M.redo(sid) }
  end
  if taken[1] ~= 'run' or not first then redis.call('SREM', M.INFLIGHT, sid) end
  M.stat_finished(sid, ok)
  M.del(sid, 'lease')
  M.settle(sid, ok, val, inp)
  M.record_owed(sid)
  return M.transition_reply()
end

-- A first delivery's start time as its finish gives it (ms text), as a run record keeps
-- it: a whole number of ms, no later than now.
function M.began(t)
  local ms = tonumber(t)
  if ms == nil or ms ~= math.floor(ms) or ms < 0 or ms >= M.NOW then return M.NOW_S end
  return string.format('%d', ms)
end

-- Acknowledge and delete the deliveries this call finished: one XACK and one XDEL per
-- stream and group. pcall: a group or stream gone since the read holds nothing pending.
function M.acknowledge()
  local by = {}
  local order = {}
  for _, a in ipairs(M.acks) do
    local k = a[1] .. '\0' .. a[2]
    local ids = by[k]
    if ids == nil then
      ids = { a[1], a[2] }
      by[k] = ids
      order[#order + 1] = ids
    end
    ids[#ids + 1] = a[3]
  end
  for _, ids in ipairs(order) do
    redis.pcall('XACK', unpack(ids))
    redis.pcall('XDEL', ids[1], unpack(ids, 3))
  end
end

-- What an operator command (suspend, resume, cancel) replies for node sid of status st
-- that it cannot act on: a node that does not exist, or one that finished; else nil.
function M.refusal(sid, st)
  if M.def(sid) == nil then return { 'err', 'missing' } end
  if M.TERMINAL[st] then return { 'err', 'finished', st } end
  return nil
end

-- One call: op ARGV[1] on the workflow hash KEYS[1] (see CALL at the top).
function M.main(KEYS, ARGV)
  M.begin(KEYS, ARGV)
  -- claim: lease up to ARGV[8] workflows due in the live index KEYS[1] for ARGV[7] ms.
  if M.OP == 'claim' then
    local due = redis.call('ZRANGEBYSCORE', M.H, '-inf', M.NOW, 'LIMIT', 0, tonumber(ARGV[8]))
    for _, wf in ipairs(due) do redis.call('ZADD', M.H, M.NOW + tonumber(ARGV[7]), wf) end
    return due
  end
  -- the layout, the root's status, dispatch counter and definition in one read
  local lr = redis.call('HMGET', M.H, 'L', M.ROOT .. ':x', M.ROOT .. ':status', M.ROOT .. ':nd',
    M.ROOT .. ':ttl_at', M.ROOT)
  M.PACKED = lr[1] == '2'
  local rt = M.node_fields(M.ROOT)
  if M.PACKED then M.unpack_rec(M.ROOT, rt, lr[2]) else rt.status = lr[3] end
  rt.nd, rt.ttl_at = lr[4], lr[5]
  M.raw_defs[M.ROOT] = lr[6]
  M.root_was_final = M.TERMINAL[M.get(M.ROOT, 'status')] ~= nil
  if M.OP == 'start' then
    -- A delivery of task sid under run rid, as task ARGV[9]: run it, or say why not. A
    -- delivery under another task name than sid's is not this node's: 'mismatch' (its
    -- definition's task name), nothing changes.
    -- ARGV[10]: its lease (ms); ARGV[11]: a first delivery taking its start while it runs,
    -- when its user code began (see M.began)
    M.result = M.start_task(ARGV[7], ARGV[8], ARGV[9], ARGV[10] and tonumber(ARGV[10]), false,
      ARGV[11] and M.began(ARGV[11]))
  elseif M.OP == 'finish' then
    -- One or more finishes of tasks of this workflow, 9 arguments each from ARGV[7]: sid,
    -- ok ('1'), val, inp, first ('' none), began, stream, group, entry ('' none) (see
    -- M.finish_task). Each is the transition it would be alone, in the order given; the
    -- reply is one finish reply per finish. A worker sends the finishes of one workflow
    -- that ended while its previous call was in flight together: what the call itself
    -- costs (its round trip, the TTL refreshes, the events entry, the acknowledgements)
    -- is paid once, and the nodes they share (their swarm) are read once.
    local replies = {}
    for i = 7, #ARGV, 9 do
      M.pubs, M.events, M.sent_now, M.collecting = {}, {}, {}, {}
      M.wake_at, M.collect_more = nil, nil
      replies[#replies + 1] = M.finish_task(ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2], ARGV[i + 3],
        ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8])
    end
    M.result = replies
  elseif M.OP == 'continue' then
    -- Task sid returned a workflow to run in its place: its root c, already stored under
    -- sid (inert until now), starts; sid settles when c does. inp: the input sid ran with.
    local sid, c, inp = ARGV[7], ARGV[8], ARGV[9]
    local d = M.def(sid)
    local cd = M.def(c)
    if d == nil or d.k ~= 'task' then
      M.result = { 'missing' }
    elseif M.TERMINAL[M.get(sid, 'status')] or M.get(sid, 'outcome') or M.get(sid, 'cont') then
      M.result = { 'dup', M.redo(sid) }
    elseif cd == nil or cd.p ~= sid then
      M.result = { 'missing' }
    else
      redis.call('SREM', M.INFLIGHT, sid)
      M.del(sid, 'lease')
      M.set(sid, 'cont', c)
      M.set(sid, 'input', inp)
      redis.call('SADD', M.CONTS, c)
      M.touched[M.CONTS] = true
      M.events[#M.events + 1] = cjson.encode({ 'continued', sid, c })
      M.start_node(c, M.context_above(c), nil, nil, nil)
      M.record_owed(sid)
      M.result = M.transition_reply()
    end
  elseif M.OP == 'run' then
    -- A client runs sid with its own message; watch: the client waits for it.
    local sid, own, watch = ARGV[7], ARGV[8], ARGV[9] == '1'
    local d = M.def(sid)
    if d == nil then
      M.result = { 'err', 'missing' }
    elseif M.get(sid, 'sent') or M.queued(sid) then
      M.result = { 'err', 'already_run' }
    elseif d.of then
      M.result = { 'err', 'callback' }
    else
      if own == '' then own = nil end
      if watch then M.set(sid, 'waited', '1') end
      local pd = d.p and M.def(d.p)
      if pd and pd.k == 'swarm' then
        if M.TERMINAL[M.get(d.p, 'status')] then
          M.result = { 'err', 'swarm_finished' }
        else
          if own then M.set(sid, 'own', own) end
          M.queue_item(d.p, sid)
          if M.get(d.p, 'sent') == nil and M.up(pd) == nil and M.get(d.p, 'status') ~= 'canceled' then
            M.stat('w:started', 1)
            M.start_node(d.p, '', nil, nil, nil) -- a root swarm starts with its first item run
          else
            M.fill(d.p)
          end
          M.result = M.transition_reply()
        end
      elseif pd then
        M.result = { 'err', pd.k == 'chain' and 'chain_step' or 'inner_node' }
      elseif M.get(sid, 'status') == 'canceled' then
        M.result = { 'err', 'finished', 'canceled' }
      else
        M.stat('w:started', 1)
        M.start_node(sid, '', own, nil, nil)
        M.result = M.transition_reply()
      end
    end
  elseif M.OP == 'add' then
    -- Add m items to open swarm s, in order: ARGV[8] = m, the m item sids; then k and k
    -- (suffix, value) pairs every item gets ("<sid><suffix>" = value: its definition,
    -- status ...); then n and n (field, value) records; then (auxiliary list name, JSON
    -- array of sids) pairs: a moved chain's steps, a moved swarm's items. All written
    -- here, or nothing is (an id already stored, or twice in the batch, refuses it all).
    local s, m = ARGV[7], tonumber(ARGV[8])
    local k_at = 9 + m
    local n_at = k_at + 1 + 2 * tonumber(ARGV[k_at])
    local d = M.def(s)
    local refused
    if d == nil or d.k ~= 'swarm' then
      refused = 'missing'
    elseif M.get(s, 'closed') == '1' then
      refused = 'closed'
    elseif M.TERMINAL[M.get(s, 'status')] then
      refused = 'swarm_finished'
    else
      local seen = {}
      for i = 9, k_at - 1, 500 do
        local j_end = math.min(i + 499, k_at - 1)
        local names = {} -- an item exists by its definition, or (templated) its run record
        for j = i, j_end do
          names[#names + 1] = ARGV[j]
          names[#names + 1] = ARGV[j] .. ':x'
        end
        local stored = redis.call('HMGET', M.H, unpack(names))
        for j = i, j_end do
          local it = ARGV[j]
          local at = 2 * (j - i) + 1
          if seen[it] or stored[at] or stored[at + 1] then refused = 'exists' end
          seen[it] = true
        end
        if refused then break end
      end
    end
    if refused then
      M.result = { 'err', refused }
    else
      local BATCH = 1000 -- arguments per command: unpack has a stack limit
      local args = {}
      local late = M.get(s, 'lazy') ~= nil -- it queued its items already: these wait for the close
      local templated = nil -- the shared definition is the swarm's item template: not copied
      if M.PACKED then
        for j = k_at + 1, n_at - 1, 2 do
          if ARGV[j] == '' then
            local tpl = M.get(s, 'tpl')
            if tpl == nil then
              M.set(s, 'tpl', ARGV[j + 1])
              tpl = ARGV[j + 1]
            end
            if tpl == ARGV[j + 1] then templated = j end
          end
        end
      end
      M.flush() -- the fields below are written directly: what this call wrote goes first
      for i = 9, k_at - 1 do
        for j = k_at + 1, n_at - 1, 2 do
          if j ~= templated then
            args[#args + 1] = ARGV[i] .. M.stored_name(ARGV[j])
            args[#args + 1] = ARGV[j + 1]
          end
        end
        if late then
          args[#args + 1] = ARGV[i] .. ':late'
          args[#args + 1] = '1'
        end
        if #args >= BATCH then
          redis.call('HSET', M.H, unpack(args))
          args = {}
        end
      end
      if #args > 0 then redis.call('HSET', M.H, unpack(args)) end
      local last = n_at + 2 * tonumber(ARGV[n_at])
      if M.PACKED then -- the client writes a status field: here it is the run record
        for i = n_at + 1, last, 2 do ARGV[i] = M.stored_name(ARGV[i]) end
      end
      for i = n_at + 1, last, BATCH do
        redis.call('HSET', M.H, unpack(ARGV, i, math.min(i + BATCH - 1, last)))
      end
      for i = last + 1, #ARGV, 2 do
        local members = cjson.decode(ARGV[i + 1])
        local key = M.H .. ':' .. ARGV[i]
        for j = 1, #members, BATCH do
          redis.call('RPUSH', key, unpack(members, j, math.min(j + BATCH - 1, #members)))
          M.touched[key] = true
        end
      end
      for i = 9, k_at - 1, BATCH do
        redis.call('RPUSH', M.aux_w('items', s), unpack(ARGV, i, math.min(i + BATCH - 1, k_at - 1)))
      end
      if M.get(s, 'flat') then
        -- a definition (a field without ':') that is not a plain task: s is flat no more
        local plain = true
        for j = k_at + 1, n_at - 1, 2 do
          if ARGV[j] == '' and not M.plain_task(ARGV[j + 1]) then plain = false end
        end
        for j = n_at + 1, last, 2 do
          if not string.find(ARGV[j], ':', 1, true) and not M.plain_task(ARGV[j + 1]) then plain = false end
        end
        if not plain then M.del(s, 'flat') end
      end
      M.result = { 'ok' }
    end
  elseif M.OP == 'close' then
    -- Swarm s takes no more items; it completes once every item ended.
    local s = ARGV[7]
    local d = M.def(s)
    if d == nil or d.k ~= 'swarm' then
      M.result = { 'err', 'missing' }
    else
      M.set(s, 'closed', '1')
      if M.get(s, 'sent') and not M.TERMINAL[M.get(s, 'status')] then
        M.queue_unqueued(s)
        M.fill(s)
        M.maybe_complete(s)
      end
      M.result = M.transition_reply()
    end
  elseif M.OP == 'suspend' then
    -- Hold sid (mode suspended|interrupted); interrupt + cancel: running tasks go back.
    local sid, mode, cancel = ARGV[7], ARGV[8], ARGV[9] == '1'
    local st = M.get(sid, 'status')
    M.result = M.refusal(sid, st)
    if not M.result then
      if not M.HOLDING[st] then M.set(sid, 'held_from', st or 'pending') end
      if st ~= 'interrupted' then M.set(sid, 'status', mode) end
      local rids = {}
      if mode == 'interrupted' and cancel then M.take_running(sid, sid, rids) end
      M.result = { 'ok', M.string_list(rids) }
    end
  elseif M.OP == 'resume' then
    -- Release exactly what sid held, once. Not held: re-send what never started.
    local sid = ARGV[7]
    local st = M.get(sid, 'status')
    local d = M.def(sid)
    M.result = M.refusal(sid, st)
    if M.result then -- refused: nothing changes
    elseif not M.HOLDING[st] then
      for _, x in ipairs(redis.call('ZRANGE', M.SENT, 0, 999)) do M.resend(x) end
      M.result = M.transition_reply()
    else
      M.set(sid, 'status', M.get(sid, 'held_from') or 'pending')
      M.del(sid, 'held_from')
      local held = redis.call('LRANGE', M.aux('held', sid), 0, -1)
      redis.call('DEL', M.aux('held', sid))
      for _, raw in ipairs(held) do
        local e = cjson.decode(raw)
        local kind, x = e[1], e[2]
        if kind == 'pub' then
          M.unpause(x)
          if not M.TERMINAL[M.get(x, 'status')] and not M.get(x, 'outcome') and not M.get(x, 'run_id') then
            M.emit(x, M.payload_of(x))
          end
        elseif kind == 'fill' then
          M.fill(x)
          M.maybe_complete(x)
        elseif kind == 'settle' then
          local o = M.get(x, 'outcome')
          if o then
            M.del(x, 'outcome')
            local ok = o == 'done'
            M.settle(x, ok, ok and M.get(x, 'result') or M.get(x, 'error'), e[3])
          end
        elseif kind == 'after' then
          local why, at = M.blocker(M.def(x).p or M.def(x).of)
          if why == 'hold' then
            M.hold(at, e)
          elseif why ~= 'canceled' then
            M.unpause(x)
            M.after(x, e[3])
          end
        end
      end
      if d.k == 'swarm' or d.k == 'graph' then
        M.fill(sid)
        M.maybe_complete(sid)
      end
      M.result = M.transition_reply()
    end
  elseif M.OP == 'cancel' then
    -- Stop root sid for good: nothing more starts, no callback fires.
    local sid = ARGV[7]
    local st = M.get(sid, 'status')
    local d = M.def(sid)
    M.result = M.refusal(sid, st)
    if M.result then -- refused: nothing changes
    elseif M.up(d) then
      -- A node inside a workflow: it and what is under it stop; for its parent it failed
      -- with a Canceled error (a chain stops, a swarm counts it against its budget). Its
      -- own callbacks never fire. Not started yet: its parent reacts when it would start.
      local rids = {}
      M.take_running(sid, sid, rids)
      M.drop_queues(sid)
      M.unpause(sid)
      redis.call('DEL', M.aux('held', sid))
      local reached = M.get(sid, 'sent') ~= nil
      if d.p and M.unqueue(d.p, sid) then reached = true end
      M.set(sid, 'status', 'canceled')
      M.set(sid, 'error', M.CANCELED)
      M.set(sid, 'ended', M.NOW_S)
      M.events[#M.events + 1] = cjson.encode({ 'canceled', sid, d.k, M.get(sid, 'started') or M.NOW_S })
      if M.get(sid, 'waited') then redis.call('PUBLISH', M.H .. ':done', sid) end
      if reached then
        local why, at = M.blocker(M.up(d))
        if why == 'hold' then
          M.hold(at, { 'after', sid, '' })
        elseif why ~= 'canceled' then
          M.after(sid, M.get(sid, 'input'))
        end
      end
      M.result = { 'ok', M.string_list(rids), M.encoded_pubs(), M.encoded_events(),
        M.wake_at and string.format('%d', M.wake_at) or '', M.collect_more }
    else
      local rids = {}
      M.take_running(sid, sid, rids)
      M.drop_queues(sid)
      redis.call('DEL', M.aux('held', sid))
      redis.call('DEL', M.SENT, M.INFLIGHT, M.DELAYED)
      M.set(sid, 'status', 'canceled')
      M.set(sid, 'ended', M.NOW_S)
      M.stat('w:canceled', 1)
      if M.get(sid, 'waited') then redis.call('PUBLISH', M.H .. ':done', sid) end
      M.result = { 'ok', M.string_list(rids) }
    end
  elseif M.OP == 'reconcile' then
    -- Re-send up to ARGV[7] dispatches that are due and never started.
    if redis.call('EXISTS', M.H) == 0 then
      return { 'gone' }
    end
    for _, x in ipairs(redis.call('ZRANGEBYSCORE', M.SENT, '-inf', M.NOW, 'LIMIT', 0, tonumber(ARGV[7]))) do
      M.resend(x)
    end
    M.release_due(tonumber(ARGV[7]))
    M.collect_next()
    local nxt = tonumber(redis.call('ZRANGE', M.SENT, 0, 0, 'WITHSCORES')[2] or '')
    local held_until = tonumber(redis.call('ZRANGE', M.DELAYED, 0, 0, 'WITHSCORES')[2] or '')
    if held_until and (nxt == nil or held_until < nxt) then nxt = held_until end
    local collect_at = tonumber(redis.call('ZRANGE', M.COLLECT, 0, 0, 'WITHSCORES')[2] or '')
    if collect_at and (nxt == nil or collect_at < nxt) then nxt = collect_at end
    M.result = { 'ok', M.encoded_pubs(), nxt and string.format('%d', nxt) or '', M.get(M.ROOT, 'status') or 'pending',
      tostring(redis.call('SCARD', M.INFLIGHT)), M.collect_more }
  elseif M.OP == 'lease' then
    -- Run ARGV[8] of task ARGV[7] still runs: its lease lasts ARGV[9] ms from now ('0':
    -- released, so that the next attempt of the same run starts at once). 'lost': the task
    -- is not (or no longer) this run's, or it settled.
    local sid, rid, ms = ARGV[7], ARGV[8], tonumber(ARGV[9])
    local d = M.def(sid)
    if d == nil or d.k ~= 'task' or M.get(sid, 'run_id') ~= rid or M.TERMINAL[M.get(sid, 'status')]
        or M.get(sid, 'outcome') then
      M.result = { 'lost' }
    else
      if ms > 0 then M.set(sid, 'lease', M.NOW + ms) else M.del(sid, 'lease') end
      M.result = { 'ok' }
    end
  elseif M.OP == 'payload' then
    -- Read only: the payload task sid is (or would be) dispatched with.
    local d = M.def(ARGV[7])
    if d == nil or d.k ~= 'task' then return { 'missing' } end
    return { 'ok', M.payload_of(ARGV[7]) }
  elseif M.OP == 'retry' then
    -- Re-run failed root sid from its failure points. Refused unless failed, and while an
    -- error callback of a failed node is dispatched or running (re-arming it would lose it).
    local sid = ARGV[7]
    local d = M.def(sid)
    local st = M.get(sid, 'status')
    if d == nil then
      M.result = { 'err', 'missing' }
    elseif M.up(d) then
      M.result = { 'err', 'not_root' }
    elseif st ~= 'failed' then
      M.result = { 'err', 'not_failed', st or 'pending' }
    elseif M.callbacks_busy() then
      M.result = { 'err', 'busy' }
    else
      M.rerun(sid)
      M.result = { 'ok', M.encoded_pubs(), M.encoded_events(), '', M.collect_more }
    end
  elseif M.OP == 'collect' then
    -- Go on assembling a big swarm's result (see COMPLETION): one part per call.
    M.collect_next()
    M.result = M.transition_reply()
  else
    return redis.error_reply('mageflow: unknown operation ' .. tostring(M.OP))
  end

  if M.get(M.ROOT, 'status') then M.refresh(M.ROOT) end -- the workflow exists
  -- a call that changes nothing writes nothing; nor does one on a finished workflow, which
  -- refreshes whatever it uses without reading ttl_at (so a shared call whose finish ends
  -- the root writes the same ttl_at as its finishes one call each)
  if not M.root_was_final and (#M.write_list > 0 or #M.dirty_list > 0) then
    for _, sid in ipairs(M.due) do M.write(sid .. ':ttl_at', M.NOW_S) end
  end
  M.flush()
  if #M.stream > 0 then
    local e = '[' .. table.concat(M.stream, ',') .. ']'
    if not redis.call('XADD', M.EVENTS, 'NOMKSTREAM', 'MAXLEN', '~', M.EVENTS_MAX, '*', 'e', e) then
      redis.call('XADD', M.EVENTS, 'MAXLEN', '~', M.EVENTS_MAX, '*', 'e', e) -- its first entry
      M.touched[M.EVENTS] = true
    end
  end

  M.final_ttl = M.TTL_ACTIVE
  if M.TERMINAL[M.get(M.ROOT, 'status')] then
    M.final_ttl = M.TTL_DONE
    if not M.root_was_final then M.expire_everything(M.final_ttl) end
  end
  for k, _ in pairs(M.touched) do
    redis.call('EXPIRE', k, M.final_ttl)
  end
  M.flush_stats()
  if #M.acks > 0 then M.acknowledge() end
  return M.result
end

return M.main(KEYS, ARGV)
