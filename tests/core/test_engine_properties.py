"""Property-based test of the engine: random nested workflows under a random broker.

Hypothesis builds workflows with the real API (tasks that succeed or fail, chains, swarms
with caps and failure budgets, open swarms fed and closed later, callbacks with their own
callbacks), runs them on :class:`ManualBackend` and plays the broker: it delivers published
messages in random order, duplicates them (new run id) and redelivers them (same run id),
keeps some running while others move, kills workers mid-run, crashes them right after a
completion was stored, drops the store's reply to a start / finish (the worker sends it
again), retries failed attempts, loses fresh publishes, sweeps the reconciler, and
suspends, interrupts, resumes and cancels nodes at random points, on a backend that can
cancel running tasks or one that cannot. Then it resumes whatever is held and drains.

Nothing here re-implements the engine. The test checks invariants and simple facts of
DESIGN.md §4 against what the user code observed and what the store reports:

* a task's user code completes at most once and never starts again after it did (a run
  may repeat only after a worker died mid-run, a retryable attempt or a backend cancel);
* no user code starts under a held (suspended / interrupted) node or a canceled workflow;
* a swarm never has more than ``max_concurrency`` items in flight (first start of any of the
  item's tasks until the item is seen finished); once stopped by its failure budget, only
  items that held a slot at the stop run on;
* a chain's steps start in order, each after the previous one finished successfully, and a
  step receives the previous step's result;
* callbacks fire once, of the right kind, with the owner's result / error; a swarm's result
  lists its items' results in item order (a failed item as ``{"mageflow_error": ...}``);
* every workflow ends terminal or held; once everything is resumed, terminal, with every
  callback that is owed having fired (the reconciler recovers lost publishes);
* when no publish was lost, the reconciler never has anything to re-send (every
  transition's publishes, including the ones a redelivery re-issues, went out).

Brokers here redeliver a run only when its worker is gone, so a run id is never in two
workers at once (the engine cannot tell that from a worker that died).

``MAGEFLOW_PROPERTY_EXAMPLES`` sets the number of in-process examples (default 1500, run as
:data:`SHARDS` tests);
``MAGEFLOW_PROPERTY_REDIS_EXAMPLES`` the number on a real Redis (default 100).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mageflow import Mageflow, SwarmConfig, faults
from mageflow.backend.base import Capabilities
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.errors import SignatureInUseError, SwarmClosedError, WorkflowFinishedError
from mageflow.flows import reconcile
from mageflow.flows.handles import Signature, SwarmSignature
from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import StateStore
from mageflow.testing.manual import ManualBackend, Sent

LEAF = "prop.leaf"
IN_PROCESS_EXAMPLES = int(os.environ.get("MAGEFLOW_PROPERTY_EXAMPLES", "1500"))
REDIS_EXAMPLES = int(os.environ.get("MAGEFLOW_PROPERTY_REDIS_EXAMPLES", "100"))
MAX_ACTIONS = 60
MAX_RUNNING = 4
MAX_ATTEMPTS = 3
TERMINAL = F.TERMINAL
HOLDING = F.HOLDING
BLOCKED = HOLDING | {"canceled"}

# -- the workflow specs hypothesis draws ------------------------------------------------


@dataclass
class Spec:
    kind: str  # task | chain | swarm
    fails: bool = False
    children: list[Spec] = field(default_factory=list)  # chain steps / swarm items
    later: list[tuple[Spec, bool]] = field(default_factory=list)  # open swarm: (item, run own)
    mc: int | None = None
    sa: int | None = None
    open: bool = False
    ok: list[Spec] = field(default_factory=list)
    err: list[Spec] = field(default_factory=list)


@st.composite
def _callbacks(draw: st.DrawFn, depth: int, budget: list[int]) -> tuple[list[Spec], list[Spec]]:
    if depth <= 0 or budget[0] <= 0:
        return [], []
    sizes = st.integers(0, 2) if budget[0] > 2 else st.integers(0, 1)
    ok = [draw(_task(depth - 1, budget)) for _ in range(draw(sizes))]
    err = [draw(_task(depth - 1, budget)) for _ in range(draw(sizes))]
    return ok, err


@st.composite
def _task(draw: st.DrawFn, cb_depth: int, budget: list[int]) -> Spec:
    budget[0] -= 1
    fails = draw(st.sampled_from([False, False, True]))
    ok, err = draw(_callbacks(cb_depth, budget))
    return Spec("task", fails=fails, ok=ok, err=err)


@st.composite
def _node(draw: st.DrawFn, depth: int, budget: list[int]) -> Spec:
    kinds = ["task", "chain", "swarm"] if depth > 0 and budget[0] > 0 else ["task"]
    kind = draw(st.sampled_from(kinds))
    if kind == "task":
        return draw(_task(2, budget))
    budget[0] -= 1
    ok, err = draw(_callbacks(2, budget))

    def kids(n: int) -> list[Spec]:
        size = draw(st.integers(0, n if budget[0] > 0 else 0))
        return [draw(_node(depth - 1, budget)) for _ in range(size)]

    if kind == "chain":
        return Spec("chain", children=kids(4), ok=ok, err=err)
    small = st.none() | st.integers(1, 3)
    spec = Spec("swarm", mc=draw(small), sa=draw(small), ok=ok, err=err)
    spec.open = draw(st.booleans())
    if spec.open:
        spec.later = [(s, draw(st.booleans())) for s in kids(3)]
    spec.children = kids(5)
    return spec


@st.composite
def workflows(draw: st.DrawFn) -> list[Spec]:
    """One or two workflows of at most about 18 nodes each (callbacks included)."""
    n = draw(st.sampled_from([1, 1, 1, 2]))
    return [draw(_node(3, [18 // n])) for _ in range(n)]


# -- the model of the world the engine runs in ------------------------------------------


class LeafFailed(Exception):
    """What a failing leaf raises."""


@dataclass
class Node:
    label: str
    spec: Spec
    handle: Signature
    wf_index: int
    parent: str | None = None  # chain or swarm this node is a step / item of
    owner: str | None = None  # node whose callback this is
    children: list[str] = field(default_factory=list)  # steps / items in item order
    ok: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    later: list[tuple[Spec, bool]] = field(default_factory=list)  # open swarm: not added yet
    closed: bool = True
    own: bool = False  # an added item run with its own message {"own": label}
    detached: bool = False  # built for an add that was refused: not part of any workflow

    @property
    def up(self) -> str | None:
        return self.parent or self.owner


@dataclass
class Msg:
    """A message the broker holds: a publish, or a redelivery the broker owes."""

    sent: Sent
    label: str
    run_id: str
    attempt: int = 1
    owed: bool = False  # redelivery of a started run: brokers never lose those


@dataclass
class Delivery:
    id: int
    msg: Msg
    final: bool
    block: bool
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    outcome: str = "acked"  # acked | crashed | retry
    error: BaseException | None = None


@dataclass
class Ev:
    kind: str  # start | end | abort
    label: str
    delivery: int
    data: Any = None  # start: the message; end: the returned value (None: it raised)
    complete: bool = True  # end: the run counts as done (returned, or failed for good)


CURRENT: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "prop_delivery", default=None
)


class CancellingManualBackend(ManualBackend):
    """ManualBackend that can cancel running tasks (``interrupt`` then takes them back)."""

    capabilities = Capabilities(cancel_running=True, remote_workers=False)

    def __init__(self, on_cancel: Callable[[Sequence[str]], Any]) -> None:
        super().__init__()
        self.on_cancel = on_cancel

    async def cancel(self, run_ids: Sequence[str]) -> None:
        await self.on_cancel(run_ids)


class Violation(AssertionError):
    pass


class World:
    """One example: the app, the workflows, the broker's messages and what was observed."""

    def __init__(self, data: st.DataObject, store: StateStore, can_cancel: bool, fault_dir: Path):
        self.data = data
        self.fault_dir = fault_dir
        self.backend: ManualBackend = (
            CancellingManualBackend(self._backend_cancel) if can_cancel else ManualBackend()
        )
        self.mf = Mageflow(backend=self.backend, store=store, resend_after=0.0)
        # a run is redelivered only once its worker is gone (never two copies at once), so
        # the lease it held lapses at once here instead of after MAGEFLOW_LEASE
        self.mf.lease = 0.05
        # the reconciler runs when the test says so (sweep), never in the background
        self.mf.start_reconciler = lambda: None  # type: ignore[method-assign]

        async def leaf(msg: dict[str, Any]) -> Any:
            return await self._leaf(msg)

        self.mf.task(LEAF)(leaf)
        self.nodes: dict[str, Node] = {}
        self.roots: list[str] = []
        self.run_roots: set[str] = set()
        self.label_of: dict[str, str] = {}
        self.addr: dict[str, tuple[str, str]] = {}
        self.pending: list[Msg] = []
        self.history: list[Msg] = []
        self.running: list[Delivery] = []
        self.events: list[Ev] = []
        self.status: dict[str, str] = {}
        self.first_terminal: dict[str, tuple[int, int]] = {}  # label -> (action, event seq)
        self.canceled_wfs: set[int] = set()
        self.trace: list[str] = []
        self.violations: list[str] = []
        self.lost = False  # a publish was lost: only the reconciler can recover it
        self.action = 0
        self._ids = itertools.count()
        self._labels = itertools.count()

    # -- the one registered task ----------------------------------------------------------
    async def _leaf(self, msg: dict[str, Any]) -> Any:
        d = CURRENT.get()
        tag = msg.get("tag")
        # never raise Violation in here: the wrapper would record it as the task's failure
        if d is None:
            self.violations.append(f"user code of {tag} ran outside a delivery")
            return None
        if tag != d.msg.label:
            self.violations.append(f"message for {d.msg.label} reached user code as {tag!r}")
        self.violations += self.why_not_start(d.msg.label)
        self.events.append(Ev("start", d.msg.label, d.id, dict(msg)))
        if d.block:
            d.entered.set()
            await d.gate.wait()
        fails = bool(msg.get("fail"))
        ret = msg.get("mageflow_results")
        value = {"t": tag, "from": ret.get("t") if isinstance(ret, dict) else type(ret).__name__}
        # a run that returned is complete whatever the attempt; a failure only when final
        complete = d.final or not fails
        self.events.append(Ev("end", d.msg.label, d.id, None if fails else value, complete))
        if fails:
            raise LeafFailed(f"boom {tag}")
        return value

    # -- bookkeeping ------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        raise Violation(what + "\n  trace:\n    " + "\n    ".join(self.trace[-80:]))

    def note(self, what: str) -> None:
        self.trace.append(f"#{self.action} {what}")

    def ancestry(self, label: str) -> Iterator[str]:
        cur: str | None = label
        while cur is not None:
            yield cur
            cur = self.nodes[cur].up

    def why_not_start(self, label: str) -> list[str]:
        """User code starts only when nothing from the task up is held or canceled."""
        return [
            f"user code of {label} started while {a} is {self.status[a]}"
            for a in self.ancestry(label)
            if self.status.get(a) in BLOCKED
        ]

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.detached]

    def refresh_keys(self) -> None:
        self.label_of.clear()
        for n in self.live_nodes():
            self.label_of[n.handle.key] = n.label
            self.addr[n.label] = split_key(n.handle.key)

    def collect(self) -> None:
        """Take what was published; a batch is ordered by label (publish order inside one
        transition may depend on random ids, and the example must replay the same)."""
        batch = self.backend.take()
        msgs = []
        for sent in batch:
            label = self.label_of.get(sent.key)
            if label is None:
                self.fail(f"published an unknown key {sent.key}")
            assert label is not None
            msgs.append(Msg(sent, label, sent.run_id))
        msgs.sort(key=lambda m: m.label)
        for m in msgs:
            self.pending.append(m)
            self.history.append(m)

    async def snapshot(self) -> None:
        by_wf: dict[str, list[str]] = {}
        for n in self.live_nodes():
            by_wf.setdefault(self.addr[n.label][0], []).append(n.label)
        for wf, labels in by_wf.items():
            values = [
                v
                for (v,) in await F.read_nodes(
                    self.mf.store, wf, [self.addr[lb][1] for lb in labels], [F.STATUS]
                )
            ]
            for lb, v in zip(labels, values, strict=True):
                self.status[lb] = v or "missing"
                if v in TERMINAL:
                    self.first_terminal.setdefault(lb, (self.action, len(self.events)))

    async def step(self, what: str, op: Callable[[], Any]) -> None:
        """One action of the schedule, then collect the publishes and look at the state."""
        self.action += 1
        self.note(what)
        await op()
        if self.violations:
            self.fail("; ".join(self.violations))
        self.collect()
        await self.snapshot()

    # -- building --------------------------------------------------------------------------
    async def build(
        self, spec: Spec, wf_index: int, parent: str | None = None, owner: str | None = None
    ) -> Node:
        label = f"n{next(self._labels)}"
        ok = [await self.build(s, wf_index, owner=label) for s in spec.ok]
        err = [await self.build(s, wf_index, owner=label) for s in spec.err]
        kids = [await self.build(s, wf_index, parent=label) for s in spec.children]
        mf = self.mf
        okh = [n.handle for n in ok]
        errh = [n.handle for n in err]
        handle: Signature
        if spec.kind == "task":
            handle = await mf.sign(
                LEAF, tag=label, fail=spec.fails, success_callbacks=okh, error_callbacks=errh
            )
        elif spec.kind == "chain":
            handle = await mf.chain([k.handle for k in kids], success=okh, error=errh)
        else:
            handle = await mf.swarm(
                [k.handle for k in kids],
                success_callbacks=okh,
                error_callbacks=errh,
                config=SwarmConfig(max_concurrency=spec.mc, stop_after_n_failures=spec.sa),
                is_swarm_closed=not spec.open,
            )
        node = Node(label, spec, handle, wf_index, parent=parent, owner=owner)
        node.children = [k.label for k in kids]
        node.ok = [n.label for n in ok]
        node.err = [n.label for n in err]
        node.later = list(spec.later)
        node.closed = not spec.open
        self.nodes[label] = node
        return node

    def subtree(self, label: str) -> list[str]:
        """label and everything built under it (steps, items, callbacks)."""
        n = self.nodes[label]
        out = [label]
        for c in (*n.children, *n.ok, *n.err):
            out += self.subtree(c)
        return out

    def slot_tasks(self, label: str) -> list[str]:
        """The tasks that run as part of label itself (callbacks run outside it)."""
        n = self.nodes[label]
        if n.spec.kind == "task":
            return [label]
        return [t for c in n.children for t in self.slot_tasks(c)]

    async def setup(self, specs: list[Spec]) -> None:
        for i, spec in enumerate(specs):
            node = await self.build(spec, i)
            self.roots.append(node.label)
        self.refresh_keys()
        await self.snapshot()

    # -- broker actions -----------------------------------------------------------------------
    async def _work(self, d: Delivery) -> None:
        token = CURRENT.set(d)
        try:
            await self.backend.deliver(
                d.msg.sent, run_id=d.msg.run_id, attempt=d.msg.attempt, final=d.final
            )
        except faults.SimulatedCrash:
            d.outcome = "crashed"
        except LeafFailed:
            d.outcome = "acked" if d.final else "retry"
        except Exception as exc:
            d.error = exc
        finally:
            CURRENT.reset(token)

    def _settled(self, d: Delivery) -> None:
        """A delivery ended (not killed): what the broker does with its message next."""
        if d.error is not None:
            self.fail(f"delivery of {d.msg.label} raised {d.error!r}")
        m = d.msg
        if d.outcome == "crashed":
            self.note(f"  worker crashed after finishing {m.label}: redelivered")
            self.pending.append(Msg(m.sent, m.label, m.run_id, m.attempt, owed=True))
        elif d.outcome == "retry":
            self.pending.append(Msg(m.sent, m.label, m.run_id, m.attempt + 1, owed=True))

    async def deliver(self, m: Msg, *, block: bool = False, final: bool = True) -> None:
        d = Delivery(next(self._ids), m, final=final or m.attempt >= MAX_ATTEMPTS, block=block)
        if not block:
            await self._work(d)
            self._settled(d)
            return
        d.task = asyncio.ensure_future(self._work(d))
        entered = asyncio.ensure_future(d.entered.wait())
        await asyncio.wait({d.task, entered}, return_when=asyncio.FIRST_COMPLETED)
        entered.cancel()
        if d.task.done():
            self._settled(d)
        else:
            self.running.append(d)

    async def release(self, d: Delivery) -> None:
        self.running.remove(d)
        d.gate.set()
        assert d.task is not None
        await asyncio.wait({d.task})
        self._settled(d)

    async def _abort(self, d: Delivery) -> None:
        self.running.remove(d)
        assert d.task is not None
        d.task.cancel()
        await asyncio.wait({d.task})
        self.events.append(Ev("abort", d.msg.label, d.id))

    async def kill(self, d: Delivery) -> None:
        """The worker running d dies: the broker redelivers the same run."""
        await self._abort(d)
        m = d.msg
        self.pending.append(Msg(m.sent, m.label, m.run_id, m.attempt, owed=True))

    async def _backend_cancel(self, run_ids: Sequence[str]) -> None:
        """The task manager cancels these runs: stopped now, never redelivered."""
        ids = set(run_ids)
        self.note(f"  backend cancels {len(ids)} run(s)")
        for d in [d for d in self.running if d.msg.run_id in ids]:
            self.note(f"  canceled running {d.msg.label}")
            await self._abort(d)
        self.pending = [m for m in self.pending if not (m.owed and m.run_id in ids)]

    async def crash_after_finish(self, m: Msg) -> None:
        armed = faults.arm(self.fault_dir, faults.AFTER_FINISH, LEAF)
        try:
            await self.deliver(m)
        finally:
            armed.unlink(missing_ok=True)

    async def deliver_losing_reply(self, m: Msg, op: str) -> None:
        """The transition ``op`` is stored but its reply never reaches the worker, which
        sends the same transition again (a store client retrying after a dropped
        connection); whatever the first reply carried is lost with it."""
        engine = self.mf.engine
        original = getattr(engine, op)

        async def twice(*args: Any, **kwargs: Any) -> Any:
            # one reply is lost, once: the retry after it (and any later call) is plain
            setattr(engine, op, original)
            await original(*args, **kwargs)
            return await original(*args, **kwargs)

        setattr(engine, op, twice)
        try:
            await self.deliver(m)
        finally:
            if op in vars(engine):
                delattr(engine, op)

    async def sweep(self) -> None:
        await reconcile.sweep(self.mf)

    # -- client actions ------------------------------------------------------------------------
    async def run_root(self, label: str) -> None:
        self.run_roots.add(label)
        try:
            await self.nodes[label].handle.aio_run_no_wait({"run": label})
        except WorkflowFinishedError:
            if self.status.get(label) != "canceled":
                self.fail(f"run of {label} refused although it is {self.status.get(label)}")

    async def lifecycle(self, op: str, label: str) -> None:
        node = self.nodes[label]
        st_before = self.status.get(label)
        try:
            if op == "cancel":
                await node.handle.cancel()
                self.canceled_wfs.add(node.wf_index)
            else:
                await getattr(node.handle, op)()
        except WorkflowFinishedError:
            if st_before not in TERMINAL:
                self.fail(f"{op} of {label} refused as finished, but it is {st_before}")
        except SignatureInUseError:
            self.fail(f"{op} of {label} refused as in use")
        else:
            if st_before in TERMINAL:
                self.fail(f"{op} of {label} accepted although it is {st_before}")

    async def add_item(self, label: str) -> None:
        sw = self.nodes[label]
        spec, run_own = sw.later.pop(0)
        item = await self.build(spec, sw.wf_index, parent=label)
        handle = sw.handle
        assert isinstance(handle, SwarmSignature)
        try:
            added = await handle.add_task(item.handle)
        except SwarmClosedError:
            if not sw.closed:
                self.fail(f"add to open swarm {label} refused as closed")
            self._detach(item.label)
            return
        except WorkflowFinishedError:
            if self.status.get(label) not in TERMINAL:
                self.fail(f"add to {label} refused as finished, but it is {self.status[label]}")
            self._detach(item.label)
            return
        if sw.closed:
            self.fail(f"add to closed swarm {label} accepted")
        item.handle = added
        sw.children.append(item.label)
        self.refresh_keys()
        if run_own:
            item.own = True
            await added.aio_run_no_wait({"own": item.label})
            if label in self.roots:  # running an item of a root swarm not run yet starts it
                self.run_roots.add(label)

    def _detach(self, label: str) -> None:
        for lb in self.subtree(label):
            self.nodes[lb].detached = True

    async def close(self, label: str) -> None:
        sw = self.nodes[label]
        handle = sw.handle
        assert isinstance(handle, SwarmSignature)
        await handle.close_swarm()
        sw.closed = True
        if sw.later:  # one more add must be refused; the rest is never added
            await self.add_item(label)
            sw.later.clear()

    # -- the schedule ---------------------------------------------------------------------------
    def draw(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        return self.data.draw(strategy, label=label)

    async def random_phase(self) -> None:
        # one "stop here?" draw per action (not a count up front), so that shrinking can
        # delete single actions from a failing schedule; stopping is the largest value
        # because hypothesis favours small ones
        for _ in range(MAX_ACTIONS):
            if self.draw(st.integers(0, 24), "stop?") == 24:
                break
            options: list[str] = []
            if self.pending:
                options += ["deliver"] * 5 + ["dup", "crash", "nonfinal", "lost reply"]
                if len(self.running) < MAX_RUNNING:
                    options += ["block"] * 2
                if any(not m.owed for m in self.pending):
                    options += ["lose"] * 2
            if self.running:
                options += ["release"] * 3 + ["kill"]
            if self.redeliverable():
                options += ["redeliver"]
            if any(r not in self.run_roots for r in self.roots):
                options += ["run"] * 3
            opens = [n.label for n in self.live_nodes() if not n.closed]
            if opens:
                options += ["add", "add", "close"]
            options += ["suspend", "interrupt", "resume"] * 2 + ["cancel"] + ["sweep"] * 2
            await self.random_action(self.draw(st.sampled_from(options), "action"), opens)

    def redeliverable(self) -> list[Msg]:
        """Messages a broker may hand out again under the same run id: not while that run
        is still running (it would take the worker for dead; that is a kill)."""
        busy = {d.msg.run_id for d in self.running}
        return [m for m in self.history if m.run_id not in busy]

    def pick(self, seq: Sequence[Any], what: str) -> Any:
        return seq[self.draw(st.integers(0, len(seq) - 1), what)]

    async def random_action(self, action: str, opens: list[str]) -> None:
        event(f"action: {action}")
        if action in ("deliver", "block", "crash", "nonfinal", "lost reply", "lose"):
            pool = self.pending if action != "lose" else [m for m in self.pending if not m.owed]
            m = self.pick(pool, "message")
            self.pending.remove(m)
            if action == "deliver":
                await self.step(f"deliver {m.label} (attempt {m.attempt})", lambda: self.deliver(m))
            elif action == "block":
                await self.step(
                    f"start {m.label}, keep it running", lambda: self.deliver(m, block=True)
                )
            elif action == "crash":
                await self.step(
                    f"deliver {m.label}, crash after finish", lambda: self.crash_after_finish(m)
                )
            elif action == "lost reply":
                op = self.draw(st.sampled_from(["start", "finish"]), "transition")
                await self.step(
                    f"deliver {m.label}; the store's reply to {op} is lost, the worker retries",
                    lambda: self.deliver_losing_reply(m, op),
                )
            elif action == "nonfinal":
                await self.step(
                    f"deliver {m.label} as a retryable attempt",
                    lambda: self.deliver(m, final=False),
                )
            else:
                self.lost = True
                await self.step(f"lose {m.label}", _nothing)
        elif action == "dup":
            m = self.pick(self.pending, "message")
            dup = Msg(m.sent, m.label, f"dup{next(self._ids)}")
            await self.step(f"broker duplicate of {m.label}", lambda: self.deliver(dup))
        elif action == "redeliver":
            m = self.pick(self.redeliverable(), "message")
            again = Msg(m.sent, m.label, m.run_id, m.attempt)
            await self.step(f"redeliver {m.label} (same run)", lambda: self.deliver(again))
        elif action in ("release", "kill"):
            d = self.pick(self.running, "running")
            if action == "release":
                await self.step(f"finish running {d.msg.label}", lambda: self.release(d))
            else:
                await self.step(f"worker dies running {d.msg.label}", lambda: self.kill(d))
        elif action == "run":
            label = self.pick([r for r in self.roots if r not in self.run_roots], "root")
            await self.step(f"run {label}", lambda: self.run_root(label))
        elif action == "add":
            label = self.pick([lb for lb in opens if self.nodes[lb].later] or opens, "swarm")
            if self.nodes[label].later:
                await self.step(f"add to {label}", lambda: self.add_item(label))
        elif action == "close":
            label = self.pick(opens, "swarm")
            await self.step(f"close {label}", lambda: self.close(label))
        elif action == "sweep":
            await self.step("reconciler sweep", self.sweep)
        else:
            # cancel of a nested node (it fails its parent) has its own tests in
            # test_engine_continue_cancel.py and the contract; this model cancels roots
            pool = self.roots if action == "cancel" else None
            label = self.pick(pool or [n.label for n in self.live_nodes()], "node")
            await self.step(f"{action} {label}", lambda: self.lifecycle(action, label))

    async def drain(self) -> None:
        """Let everything run to the end: start the roots, feed and close the open swarms,
        finish what runs, deliver what is pending, sweep until nothing is re-sent."""
        for r in self.roots:
            if r not in self.run_roots:
                await self.step(f"run {r}", lambda r=r: self.run_root(r))  # type: ignore[misc]
        for _ in range(200):
            opens = [n.label for n in self.live_nodes() if not n.closed]
            if not opens:
                break
            lb = opens[0]
            if self.nodes[lb].later:
                await self.step(f"add to {lb}", lambda lb=lb: self.add_item(lb))  # type: ignore[misc]
            else:
                await self.step(f"close {lb}", lambda lb=lb: self.close(lb))  # type: ignore[misc]
        for _ in range(5000):
            if self.running:
                d = self.running[0]
                await self.step(f"finish running {d.msg.label}", lambda d=d: self.release(d))  # type: ignore[misc]
            elif self.pending:
                m = self.pending.pop(0)
                await self.step(f"deliver {m.label}", lambda m=m: self.deliver(m))  # type: ignore[misc]
            else:
                await self.step("reconciler sweep", self.sweep)
                if not self.pending:
                    return
                if not self.lost:
                    # everything published was delivered: a task that was dispatched and
                    # never started means some transition's publishes went missing
                    lost = sorted({m.label for m in self.pending})
                    self.fail(f"the reconciler had to re-send {lost}, yet no publish was lost")
        self.fail("the workflows never quiesce")

    def held(self) -> list[str]:
        return sorted(lb for lb in self.nodes if self.status.get(lb) in HOLDING)

    async def resume_all(self) -> None:
        for _ in range(50):
            held = self.held()
            if not held:
                return
            for lb in self.draw(st.permutations(held), "resume order"):
                if self.status.get(lb) in HOLDING:
                    await self.step(f"resume {lb}", lambda lb=lb: self.lifecycle("resume", lb))  # type: ignore[misc]
            await self.drain()
        self.fail(f"still held after resuming everything: {self.held()}")

    # -- invariants -------------------------------------------------------------------------------
    def check_user_code_once(self) -> dict[str, tuple[int, Ev]]:
        """A run may repeat only after a run that did not complete; returns per task the
        start of its completed run."""
        completed: dict[str, tuple[int, Ev]] = {}
        starts: dict[int, tuple[int, Ev]] = {}
        for i, e in enumerate(self.events):
            if e.kind == "start":
                if e.label in completed:
                    self.fail(f"user code of {e.label} ran again after it completed")
                starts[e.delivery] = (i, e)
            elif e.kind == "end" and e.complete:
                if e.label in completed:
                    self.fail(f"user code of {e.label} completed twice")
                completed[e.label] = starts[e.delivery]
        return completed

    def first_start(self, label: str) -> int | None:
        tasks = set(self.slot_tasks(label))
        return next(
            (i for i, e in enumerate(self.events) if e.kind == "start" and e.label in tasks), None
        )

    def check_concurrency(self, sw: Node) -> None:
        cap = sw.spec.mc
        if cap is None:
            return
        marks: list[tuple[int, int, str]] = []
        for it in sw.children:
            s = self.first_start(it)
            if s is None:
                continue
            end = self.first_terminal.get(it, (0, 10**9))[1]
            marks += [(s, 1, it), (end, 0, it)]  # an end sorts before a start at one point
        level = 0
        inflight: set[str] = set()
        for _, kind, it in sorted(marks):
            level += 1 if kind else -1
            (inflight.add if kind else inflight.discard)(it)
            if level > cap:
                self.fail(f"swarm {sw.label} (max_concurrency={cap}) runs {sorted(inflight)}")

    def check_stopped_swarm(self, sw: Node) -> None:
        """A stopped swarm starts nothing new: fill never runs after the stop, so every
        item that had not ended by then and runs at all held a slot at the stop."""
        cap = sw.spec.mc
        stopped = self.first_terminal.get(sw.label)
        if cap is None or stopped is None:
            return
        holding = [
            it
            for it in sw.children
            if self.first_start(it) is not None
            and self.first_terminal.get(it, (10**9, 0))[0] > stopped[0]
        ]
        if len(holding) > cap:
            self.fail(f"{sw.label} (max_concurrency={cap}) ended, yet {holding} ran on")

    def check_chain_order(self, ch: Node) -> None:
        for j, sj in enumerate(ch.children):
            s = self.first_start(sj)
            if s is None:
                continue
            for si in ch.children[:j]:
                if self.status.get(si) != "done":
                    self.fail(f"step {sj} of {ch.label} ran though step {si} is {self.status[si]}")
                ended = self.first_terminal.get(si, (0, 10**9))[1]
                if s < ended:
                    self.fail(f"step {sj} of {ch.label} started before step {si} finished")

    async def check_end(self) -> None:
        completed = self.check_user_code_once()
        states = {n.label: await n.handle.get_state() for n in self.live_nodes()}

        def res(label: str) -> Any:
            st_ = states[label]
            if st_.status.value == "done":
                return st_.result
            return {"mageflow_error": st_.error}

        for n in self.live_nodes():
            lb = n.label
            state = states[lb]
            status = state.status.value
            canceled = n.wf_index in self.canceled_wfs
            if status in HOLDING:
                self.fail(f"{lb} still {status} after resuming everything")
            # a task is done/failed exactly when one of its runs completed
            if n.spec.kind == "task":
                run = completed.get(lb)
                end = next(
                    (e for e in self.events if e.kind == "end" and e.complete and e.label == lb),
                    None,
                )
                if status == "done":
                    if run is None or end is None or end.data is None:
                        self.fail(f"task {lb} is done without a successful run")
                    assert end is not None
                    if state.result != end.data:
                        self.fail(f"task {lb} stored {state.result}, returned {end.data}")
                elif status == "failed":
                    if run is None or end is None or end.data is not None:
                        self.fail(f"task {lb} failed without a failing run")
                    want = {"type": "LeafFailed", "message": f"boom {lb}"}
                    if state.error != want:
                        self.fail(f"task {lb} stored error {state.error}")
                elif run is not None and not canceled:  # cancel may end a held outcome
                    self.fail(f"task {lb} completed a run but is {status}")
                if n.own and run is not None and run[1].data.get("own") != lb:
                    self.fail(f"item {lb} ran without its own message: {run[1].data}")
            # callbacks: once, the right kind, with the owner's result or error
            for kind, cbs in (("done", n.ok), ("failed", n.err)):
                for cb in cbs:
                    fired = [t for t in self.subtree(cb) if self.first_start(t) is not None]
                    ran = cb in completed
                    if status != kind:
                        if fired:
                            self.fail(f"{kind} callback {cb} of {lb} ({status}) ran")
                        continue
                    if not ran:
                        if not canceled:
                            self.fail(f"{kind} callback {cb} of {lb} never ran")
                        continue
                    got = completed[cb][1].data
                    if kind == "done" and got.get("mageflow_results") != state.result:
                        self.fail(
                            f"callback {cb} got {got.get('mageflow_results')}, "
                            f"{lb} returned {state.result}"
                        )
                    if kind == "failed" and got.get("mageflow_error") != state.error:
                        self.fail(
                            f"callback {cb} got {got.get('mageflow_error')}, "
                            f"{lb} failed with {state.error}"
                        )
            if n.spec.kind == "chain":
                self.check_chain_order(n)
                for j, sj in enumerate(n.children[1:], start=1):
                    if self.nodes[sj].spec.kind == "task" and sj in completed:
                        got = completed[sj][1].data.get("mageflow_results")
                        if got != res(n.children[j - 1]):
                            self.fail(f"step {sj} of {lb} got {got}")
                if status == "done" and n.children:
                    if any(states[s].status.value != "done" for s in n.children):
                        self.fail(f"chain {lb} done before all its steps")
                    if state.result != states[n.children[-1]].result:
                        self.fail(f"chain {lb} result {state.result} is not its last step's")
                if status == "failed":
                    failed = [s for s in n.children if states[s].status.value == "failed"]
                    if len(failed) != 1 or state.error != states[failed[0]].error:
                        self.fail(f"chain {lb} failed with {state.error}; failed steps {failed}")
            if n.spec.kind == "swarm":
                self.check_concurrency(n)
                self.check_stopped_swarm(n)
                n_failed = sum(states[i].status.value == "failed" for i in n.children)
                if status == "done":
                    want = [res(i) for i in n.children]
                    if state.result != want:
                        self.fail(f"swarm {lb} result {state.result}, items say {want}")
                    if n.spec.sa is not None and n_failed >= n.spec.sa:
                        self.fail(f"swarm {lb} done with {n_failed} failures (stop at {n.spec.sa})")
                if status == "failed" and (n.spec.sa is None or n_failed < n.spec.sa):
                    self.fail(f"swarm {lb} failed with {n_failed} failed items (sa={n.spec.sa})")
        for r in self.roots:
            if self.status[r] not in TERMINAL:
                self.fail(f"workflow {r} ended {self.status[r]}")

    def check_terminal_or_held(self) -> None:
        for i, r in enumerate(self.roots):
            if self.status[r] in TERMINAL:
                continue
            held = [
                n.label for n in self.live_nodes() if n.wf_index == i and n.label in self.held()
            ]
            if not held:
                self.fail(f"workflow {r} is {self.status[r]} with nothing held")

    async def play(self, specs: list[Spec]) -> None:
        await self.setup(specs)
        await self.random_phase()
        event(f"nodes: {len(self.nodes) // 5 * 5}+")
        event(f"actions: {self.action // 10 * 10}+")
        self.note("-- drain")
        await self.drain()
        self.check_terminal_or_held()
        event(f"held after drain: {bool(self.held())}")
        event(f"roots: {sorted(self.status[r] for r in self.roots)}")
        self.note("-- resume everything")
        await self.resume_all()
        await self.check_end()


async def _nothing() -> None:
    return None


# -- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("property-faults")
    faults.configure(path)
    yield path
    faults.configure(None)


async def _play(data: st.DataObject, store: StateStore, fault_dir: Path) -> None:
    specs = data.draw(workflows(), label="workflows")
    can_cancel = data.draw(st.booleans(), label="backend cancels running tasks")
    world = World(data, store, can_cancel, fault_dir)
    # the engine runs workflows of both layouts: those built before the run record too
    world.mf.engine.packed_state = data.draw(st.booleans(), label="workflows keep run records")
    try:
        await world.play(specs)
    finally:
        await world.mf.aclose()


_SETTINGS: dict[str, Any] = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


SHARDS = 3
"""The in-process examples run as this many tests of a third each (random examples, drawn
independently), so that pytest-xdist spreads the longest test of the suite over its
processes instead of leaving one of them with all of it."""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("shard", range(SHARDS))
@settings(max_examples=max(IN_PROCESS_EXAMPLES // SHARDS, 1), **_SETTINGS)
@given(data=st.data())
def test_engine_properties_in_process(fault_dir: Path, shard: int, data: st.DataObject) -> None:
    asyncio.run(_play(data, MemoryStore(), fault_dir))


@pytest.mark.timeout(900)
@settings(max_examples=REDIS_EXAMPLES, **_SETTINGS)
@given(data=st.data())
def test_engine_properties_on_redis(redis_url: str, fault_dir: Path, data: st.DataObject) -> None:
    store = RedisStore(redis_url, prefix=f"prop-{uuid.uuid4().hex[:8]}")
    asyncio.run(_play(data, store, fault_dir))


def test_spec_strategy_builds_every_shape() -> None:
    """The strategy reaches every construct the property is about."""
    seen: set[str] = set()

    def walk(s: Spec, where: str) -> None:
        seen.add(f"{where}{s.kind}")
        if s.kind == "swarm":
            seen.update({"mc"} if s.mc else set())
            seen.update({"sa"} if s.sa else set())
            seen.update({"open"} if s.open else set())
            seen.update({"later"} if s.later else set())
        if s.fails:
            seen.add("fails")
        for c in s.children:
            walk(c, "in-")
        for c in (*s.ok, *s.err):
            walk(c, "cb-")
            if c.ok or c.err:
                seen.add("cb-of-cb")
        for c, _ in s.later:
            walk(c, "in-")

    @settings(max_examples=300, database=None, **_SETTINGS)
    @given(workflows())
    def sample(specs: list[Spec]) -> None:
        for s in specs:
            walk(s, "")

    sample()
    want = {
        "task",
        "chain",
        "swarm",
        "in-chain",
        "in-swarm",
        "cb-task",
        "mc",
        "sa",
        "open",
        "later",
        "fails",
        "cb-of-cb",
    }
    assert want <= seen, want - seen
