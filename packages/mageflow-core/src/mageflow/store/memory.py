"""``MemoryStore``: the embedded default. Same semantics as :class:`RedisStore`.

:class:`_Transition` mirrors ``lua/transitions.lua`` function by function, over the same
field layout, so the shared store test suite holds both to one behaviour. A transition
runs without awaiting, which makes it atomic on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mageflow.store.base import HOLDING, TERMINAL, StateStore


@dataclass
class _Workflow:
    hash: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    queues: dict[str, deque[str]] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


def _enc(value: str) -> str:
    return json.dumps(value)


class _Transition:
    """One transition over one workflow; see the Lua file for the meaning of each step."""

    def __init__(self, wf: _Workflow, now: str, on_publish: Any) -> None:
        self.wf = wf
        self.now = now
        self.pubs: list[str] = []
        self.events: list[str] = []
        self.on_publish = on_publish

    # -- field helpers -----------------------------------------------------------------
    def get(self, sid: str, f: str) -> str | None:
        return self.wf.hash.get(f"{sid}:{f}")

    def put(self, sid: str, f: str, v: object) -> None:
        self.wf.hash[f"{sid}:{f}"] = str(v)

    def incr(self, sid: str, f: str, by: int) -> int:
        value = int(self.wf.hash.get(f"{sid}:{f}", "0")) + by
        self.wf.hash[f"{sid}:{f}"] = str(value)
        return value

    def definition(self, sid: str) -> dict[str, Any] | None:
        raw = self.wf.hash.get(sid)
        return None if raw is None else dict(json.loads(raw))

    def lst(self, kind: str, sid: str) -> list[str]:
        return self.wf.lists.setdefault(f"{kind}:{sid}", [])

    def queue(self, sid: str) -> deque[str]:
        return self.wf.queues.setdefault(f"q:{sid}", deque())

    def running(self, sid: str) -> set[str]:
        return self.wf.sets.setdefault(f"r:{sid}", set())

    # -- mirror of the Lua functions ---------------------------------------------------
    @staticmethod
    def join(a: str | None, b: str | None) -> str:
        if not a:
            return b or ""
        if not b:
            return a
        return f"{a},{b}"

    @staticmethod
    def payload(inl: str | None, own: str | None, ret: str | None, err: str | None) -> str:
        parts = [f'"in":[{inl or ""}]']
        if own is not None:
            parts.append(f'"own":{own}')
        if ret is not None:
            parts.append(f'"ret":{ret}')
        if err is not None:
            parts.append(f'"err":{err}')
        return "{" + ",".join(parts) + "}"

    @staticmethod
    def spec(task: str, sid: str, pl: str) -> str:
        return f"[{_enc(task)},{_enc(sid)},{pl}]"

    def blocker(self, sid: str) -> tuple[str | None, str | None]:
        cur: str | None = sid
        while cur:
            st = self.get(cur, "s")
            if st == "canceled":
                return "canceled", cur
            if st in HOLDING:
                return "hold", cur
            d = self.definition(cur)
            cur = (d.get("p") or d.get("o")) if d else None
        return None, None

    def emit(self, sid: str, task: str, pl: str) -> None:
        why, at = self.blocker(sid)
        if why == "canceled":
            return
        if why == "hold" and at is not None:
            self.lst("h", at).append(self.spec(task, sid, pl))
            return
        self.pubs.append(self.spec(task, sid, pl))

    def queue_unqueued(self, s: str) -> None:
        items = self.lst("i", s)
        for it in items[int(self.get(s, "qd") or "0") :]:
            if not self.get(it, "q"):
                self.put(it, "q", "1")
                self.queue(s).append(it)
        self.put(s, "qd", len(items))

    def maybe_complete(self, s: str) -> None:
        if self.get(s, "closed") != "1" or self.get(s, "d") is None:
            return
        if self.get(s, "s") in TERMINAL:
            return
        items = self.lst("i", s)
        if int(self.get(s, "fin") or "0") < len(items):
            return
        out = []
        for it in items:
            if self.get(it, "s") == "done":
                out.append(self.get(it, "r") or "null")
            else:
                out.append('{"mageflow_error":' + (self.get(it, "e") or "null") + "}")
        self.settle(s, True, "[" + ",".join(out) + "]", None)

    def fill(self, s: str) -> None:
        if self.get(s, "s") in TERMINAL or self.get(s, "d") is None:
            return
        why, at = self.blocker(s)
        if why == "canceled":
            return
        if why == "hold" and at is not None:
            self.lst("h", at).append(json.dumps(["fill", s]))
            return
        d = self.definition(s) or {}
        mc = d.get("mc")
        running = int(self.get(s, "run") or "0")
        mi, mr, me = self.get(s, "mi"), self.get(s, "mr"), self.get(s, "me")
        queue = self.queue(s)
        while mc is None or running < mc:
            if not queue:
                break
            it = queue.popleft()
            running += 1
            self.put(s, "run", running)
            self.running(s).add(it)
            self.start_node(it, mi, self.get(it, "own"), mr, me)

    def start_node(
        self, sid: str, inl: str | None, own: str | None, ret: str | None, err: str | None
    ) -> None:
        d = self.definition(sid) or {}
        self.put(sid, "d", self.now)
        if d["k"] == "task":
            self.emit(sid, d["t"], self.payload(inl, own, ret, err))
            return
        mi = self.join(inl, own)
        self.put(sid, "s", "active")
        self.put(sid, "t0", self.now)
        self.put(sid, "mi", mi)
        if ret is not None:
            self.put(sid, "mr", ret)
        if err is not None:
            self.put(sid, "me", err)
        if d["k"] == "chain":
            self.put(sid, "cur", 0)
            if not d.get("steps"):
                self.settle(sid, True, ret if ret is not None else "null", None)
            else:
                self.start_node(d["steps"][0], mi, None, ret, err)
        else:
            self.queue_unqueued(sid)
            self.fill(sid)
            self.maybe_complete(sid)

    def chain_step_done(self, c: str, sid: str, ok: bool, val: str) -> None:
        if self.get(c, "s") in TERMINAL:
            return
        cd = self.definition(c) or {}
        cur = int(self.get(c, "cur") or "0")
        steps = cd.get("steps") or []
        if cur >= len(steps) or steps[cur] != sid:
            return
        if not ok:
            self.settle(c, False, val, self.get(c, "mi"))
        elif cur + 1 < len(steps):
            self.put(c, "cur", cur + 1)
            self.events.append(json.dumps(["advanced", c, steps[cur + 1]]))
            self.start_node(steps[cur + 1], "", None, val, None)
        else:
            self.settle(c, True, val, None)

    def swarm_item_done(self, s: str, sid: str, ok: bool, val: str) -> None:
        if sid in self.running(s):
            self.running(s).discard(sid)
            self.incr(s, "run", -1)
        self.incr(s, "fin", 1)
        self.events.append(json.dumps(["item", s, sid, "done" if ok else "failed"]))
        nf = int(self.get(s, "nf") or "0")
        if not ok:
            nf = self.incr(s, "nf", 1)
        if self.get(s, "s") in TERMINAL:
            return
        d = self.definition(s) or {}
        sa = d.get("sa")
        if not ok and sa is not None and nf >= sa:
            self.wf.queues.pop(f"q:{s}", None)
            last = json.loads(val)
            msg = (
                f"{nf} item(s) failed (stop_after_n_failures={sa}); "
                f"last: {last.get('type')}: {last.get('message')}"
            )
            self.settle(
                s, False, json.dumps({"type": "SwarmFailed", "message": msg}), self.get(s, "mi")
            )
            return
        self.fill(s)
        self.maybe_complete(s)

    def settle(self, sid: str, ok: bool, val: str, inl: str | None) -> None:
        d = self.definition(sid) or {}
        self.put(sid, "t1", self.now)
        if ok:
            self.put(sid, "s", "done")
            self.put(sid, "r", val)
            for cb in d.get("ok") or []:
                self.start_node(cb, "", None, val, None)
        else:
            self.put(sid, "s", "failed")
            self.put(sid, "e", val)
            for cb in d.get("err") or []:
                self.start_node(cb, inl, None, None, val)
        started = self.get(sid, "t0") or self.now
        self.events.append(json.dumps(["done" if ok else "failed", sid, d["k"], started]))
        if self.get(sid, "w"):
            self.on_publish(sid)
        parent = d.get("p")
        if parent:
            pd = self.definition(parent) or {}
            if pd["k"] == "chain":
                self.chain_step_done(parent, sid, ok, val)
            else:
                self.swarm_item_done(parent, sid, ok, val)

    def encoded_pubs(self) -> str:
        return "[" + ",".join(self.pubs) + "]"

    def encoded_events(self) -> str:
        return "[" + ",".join(self.events) + "]"

    def take_running(self, sid: str, holder: str, out: list[str]) -> None:
        d = self.definition(sid) or {}
        if d["k"] == "task":
            if self.get(sid, "s") == "active":
                out.append(self.get(sid, "rid") or "")
                self.put(sid, "s", "pending")
                pl = self.get(sid, "pl") or self.payload("", None, None, None)
                self.lst("h", holder).append(self.spec(d["t"], sid, pl))
        elif d["k"] == "chain":
            if self.get(sid, "d") and self.get(sid, "s") not in TERMINAL:
                self.take_running(d["steps"][int(self.get(sid, "cur") or "0")], holder, out)
        else:
            for it in sorted(self.running(sid)):
                self.take_running(it, holder, out)

    # -- operations --------------------------------------------------------------------
    def op_start(self, sid: str, rid: str, pl: str) -> list[str]:
        d = self.definition(sid)
        if d is None:
            return ["missing"]
        st = self.get(sid, "s")
        if st in ("done", "failed"):
            if self.get(sid, "rid") == rid:
                return ["redo", self.get(sid, "o") or "[]"]
            return ["dup"]
        if st == "canceled":
            return ["dropped"]
        if st == "active" and self.get(sid, "rid") != rid:
            return ["dup"]
        why, at = self.blocker(sid)
        if why == "canceled":
            return ["dropped"]
        if why == "hold" and at is not None:
            self.lst("h", at).append(self.spec(d["t"], sid, pl))
            return ["held"]
        self.put(sid, "s", "active")
        self.put(sid, "rid", rid)
        self.put(sid, "pl", pl)
        if not self.get(sid, "t0"):
            self.put(sid, "t0", self.now)
        attempt = self.incr(sid, "a", 1)
        return ["run", self.get(sid, "kw") or "{}", str(attempt)]

    def op_finish(self, sid: str, ok: str, val: str, inp: str) -> list[str]:
        st = self.get(sid, "s")
        if st is None and self.definition(sid) is None:
            return ["missing"]
        if st in TERMINAL:
            return ["dup", self.get(sid, "o") or "[]"]
        self.settle(sid, ok == "1", val, inp)
        enc = self.encoded_pubs()
        self.put(sid, "o", enc)
        return ["ok", enc, self.encoded_events()]

    def op_run(self, sid: str, own: str, watch: str) -> list[str]:
        d = self.definition(sid)
        if d is None:
            return ["err", "missing"]
        if self.get(sid, "d") or self.get(sid, "q"):
            return ["err", "already_run"]
        if d.get("o"):
            return ["err", "callback"]
        own_msg = own or None
        if watch == "1":
            self.put(sid, "w", "1")
        parent = d.get("p")
        pd = self.definition(parent) if parent else None
        if parent and pd and pd["k"] == "swarm":
            if self.get(parent, "s") in TERMINAL:
                return ["err", "swarm_finished"]
            if own_msg is not None:
                self.put(sid, "own", own_msg)
            self.put(sid, "q", "1")
            self.queue(parent).append(sid)
            self.fill(parent)
            return ["ok", self.encoded_pubs(), self.encoded_events()]
        if pd:
            return ["err", "chain_step"]
        self.start_node(sid, "", own_msg, None, None)
        self.put(sid, "o", self.encoded_pubs())
        return ["ok", self.encoded_pubs(), self.encoded_events()]

    def op_add(self, s: str, it: str, *flat: str) -> list[str]:
        if self.definition(s) is None:
            return ["err", "missing"]
        if self.get(s, "closed") == "1":
            return ["err", "closed"]
        if self.get(s, "s") in TERMINAL:
            return ["err", "swarm_finished"]
        for i in range(0, len(flat), 2):
            self.wf.hash[flat[i]] = flat[i + 1]
        self.lst("i", s).append(it)
        return ["ok"]

    def op_close(self, s: str) -> list[str]:
        if self.definition(s) is None:
            return ["err", "missing"]
        self.put(s, "closed", "1")
        if self.get(s, "d") and self.get(s, "s") not in TERMINAL:
            self.queue_unqueued(s)
            self.fill(s)
            self.maybe_complete(s)
        return ["ok", self.encoded_pubs(), self.encoded_events()]

    def op_suspend(self, sid: str, mode: str, cancel: str) -> list[str]:
        st = self.get(sid, "s")
        if self.definition(sid) is None:
            return ["err", "missing"]
        if st in TERMINAL:
            return ["err", "finished", st or ""]
        if st not in HOLDING:
            self.put(sid, "ps", st or "pending")
        if st != "interrupted":
            self.put(sid, "s", mode)
        rids: list[str] = []
        if mode == "interrupted" and cancel == "1":
            self.take_running(sid, sid, rids)
        return ["ok", json.dumps(rids)]

    def op_resume(self, sid: str) -> list[str]:
        st = self.get(sid, "s")
        d = self.definition(sid)
        if d is None:
            return ["err", "missing"]
        if st in TERMINAL:
            return ["err", "finished", st or ""]
        if st not in HOLDING:
            return ["ok", self.get(sid, "ro") or "[]"]
        self.put(sid, "s", self.get(sid, "ps") or "pending")
        held = self.wf.lists.pop(f"h:{sid}", [])
        for entry in held:
            if entry.startswith('["fill",'):
                self.fill(json.loads(entry)[1])
            else:
                self.pubs.append(entry)
        if d["k"] == "swarm":
            self.fill(sid)
        enc = self.encoded_pubs()
        self.put(sid, "ro", enc)
        return ["ok", enc, self.encoded_events()]

    def op_cancel(self, sid: str) -> list[str]:
        st = self.get(sid, "s")
        d = self.definition(sid)
        if d is None:
            return ["err", "missing"]
        if st in TERMINAL:
            return ["err", "finished", st or ""]
        if d.get("p") or d.get("o"):
            return ["err", "not_root"]
        rids: list[str] = []
        self.take_running(sid, sid, rids)
        self.wf.lists.pop(f"h:{sid}", None)
        self.put(sid, "s", "canceled")
        self.put(sid, "t1", self.now)
        if self.get(sid, "w"):
            self.on_publish(sid)
        return ["ok", json.dumps(rids)]


class MemoryStore(StateStore):
    """In-process state for the embedded default and tests. Not shared between processes.
    TTLs are accepted for interface parity; finished workflows are kept until
    :meth:`close` or :meth:`delete` (the process owns them)."""

    def __init__(self, *, active_ttl: int = 0, finished_ttl: int = 0) -> None:
        self.active_ttl = active_ttl
        self.finished_ttl = finished_ttl
        self._wfs: dict[str, _Workflow] = {}
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self.url = "memory://"

    def _wf(self, wf: str) -> _Workflow:
        return self._wfs.setdefault(wf, _Workflow())

    async def _transition(self, wf: str, op: str, *args: str) -> list[str]:
        workflow = self._wfs.get(wf) or _Workflow()

        def notify(sid: str) -> None:
            for fut in self._waiters.pop((wf, sid), []):
                if not fut.done():
                    fut.set_result(None)

        tr = _Transition(workflow, str(int(time.time() * 1000)), notify)
        method = getattr(tr, f"op_{op}")
        reply: list[str] = method(*args)
        if workflow.hash:
            self._wfs[wf] = workflow
        return reply

    async def write(
        self, wf: str, fields: Mapping[str, str], lists: Mapping[str, Sequence[str]]
    ) -> None:
        workflow = self._wf(wf)
        workflow.hash.update(fields)
        for name, values in lists.items():
            workflow.lists.setdefault(name, []).extend(values)

    async def delete(self, wf: str, lists: Sequence[str] = ()) -> None:
        self._wfs.pop(wf, None)

    async def read(self, wf: str, fields: Sequence[str]) -> list[str | None]:
        h = self._wfs[wf].hash if wf in self._wfs else {}
        return [h.get(f) for f in fields]

    async def read_all(self, wf: str) -> dict[str, str]:
        return dict(self._wfs[wf].hash) if wf in self._wfs else {}

    async def read_list(self, wf: str, name: str, start: int = 0, stop: int = -1) -> list[str]:
        workflow = self._wfs.get(wf) or _Workflow()
        values = list(workflow.queues.get(name, ())) or workflow.lists.get(name, [])
        end = None if stop == -1 else stop + 1
        return list(values[start:end])

    async def count(self, wf: str, name: str) -> int:
        if wf not in self._wfs:
            return 0
        workflow = self._wfs[wf]
        if name in workflow.sets:
            return len(workflow.sets[name])
        if name in workflow.queues:
            return len(workflow.queues[name])
        return len(workflow.lists.get(name, []))

    async def list_workflows(self, limit: int = 100) -> list[str]:
        ordered = sorted(self._wfs.items(), key=lambda kv: kv[1].created, reverse=True)
        return [wf for wf, _ in ordered[:limit]]

    async def wait(self, wf: str, sid: str, timeout: float | None) -> str:
        workflow = self._wf(wf)
        workflow.hash[f"{sid}:w"] = "1"
        status = workflow.hash.get(f"{sid}:s")
        while status not in TERMINAL:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault((wf, sid), []).append(fut)
            await asyncio.wait_for(fut, timeout)
            status = workflow.hash.get(f"{sid}:s")
        return str(status)

    async def ping(self) -> None:
        return None
