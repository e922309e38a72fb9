"""Runs a Redis Lua script in-process (Lua 5.1, as Redis does, through ``lupa``) over a
:class:`~mageflow.store.keyspace.Keyspace`.

``redis.call`` supports the commands the engine uses, with Redis's conversions both ways
(nil bulk -> ``false``, integers -> numbers, numbers passed as arguments -> their
``%.14g`` text); ``cjson`` is provided with Redis's encoding of empty tables (``{}``).
A call runs without yielding to the event loop, so it is atomic like ``EVALSHA``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from lupa import lua51  # type: ignore[import-untyped]

from mageflow.store.base import ENTRY_CALL
from mageflow.store.keyspace import Keyspace, score_text

_Command = Callable[..., Any]
DECODE_CACHE_SIZE = 4096
DECODE_CACHE_TEXT = 4096


class ScriptFailed(Exception):
    """The script raised an error or returned ``redis.error_reply``."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ScriptFailed("Lua redis lib command arguments must be strings or integers")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.14g}"
    raise ScriptFailed(f"Lua redis lib command arguments must be strings or numbers: {value!r}")


def _score(text: str) -> float:
    if text in ("-inf", "+inf", "inf"):
        return -math.inf if text == "-inf" else math.inf
    return float(text)


class LuaHost:
    """One Lua runtime; :meth:`run` executes a loaded script against the keyspace."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        self.lua = lua51.LuaRuntime(encoding="utf-8", register_eval=False)
        self._compiled: dict[str, Any] = {}
        # decoded JSON by text: the script only reads what cjson.decode returns, and most
        # decodes are of definitions, which never change
        self._decoded: dict[str, Any] = {}
        self._commands: dict[str, _Command] = self._command_table()
        make_lib = self.lua.eval(
            """function(call, encode, decode)
                 local redis = {}
                 redis.call = call
                 redis.error_reply = function(msg) return { err = msg } end
                 redis.status_reply = function(msg) return { ok = msg } end
                 return redis, { encode = encode, decode = decode }
               end"""
        )
        self._redis, self._cjson = make_lib(self._call, self._encode, self._decode)
        self._loader = self.lua.eval(
            "function(src, redis, cjson) "
            "local f, err = loadstring('return function(KEYS, ARGV, redis, cjson) ' .. src .. "
            "'\\nend', '@transitions') "
            "if not f then error(err) end return f() end"
        )
        # a script ending in ENTRY_CALL is loaded once, as Redis loads a function library:
        # its definitions run here, and each call runs only its M.main
        self._library_loader = self.lua.eval(
            "function(body, redis, cjson) "
            "local f, err = loadstring('return function(redis, cjson) ' .. body .. "
            "'\\nreturn function(KEYS, ARGV, redis, cjson) return M.main(KEYS, ARGV) end end', "
            "'@transitions') "
            "if not f then error(err) end return f()(redis, cjson) end"
        )

    def run(self, sha: str, source: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        fn = self._compiled.get(sha)
        if fn is None:
            text = source.rstrip()
            if text.endswith(ENTRY_CALL):
                body = text[: -len(ENTRY_CALL)]
                fn = self._library_loader(body, self._redis, self._cjson)
            else:
                fn = self._loader(source, self._redis, self._cjson)
            self._compiled[sha] = fn
        self.keyspace.sweep()
        self.keyspace.frozen = self.keyspace.clock()
        try:
            reply = fn(
                self.lua.table_from(list(keys)),
                self.lua.table_from(list(args)),
                self._redis,
                self._cjson,
            )
        except ScriptFailed:
            raise
        except Exception as exc:  # lupa.LuaError, or a command's own error
            raise ScriptFailed(str(exc)) from exc
        finally:
            self.keyspace.frozen = None
        return self._reply(reply)

    # -- replies ------------------------------------------------------------------------------
    def _reply(self, value: Any) -> Any:
        if value is None or value is False:
            return None
        if value is True:
            return 1
        if isinstance(value, (int, float)):
            return int(value)
        if isinstance(value, str):
            return value
        err = value["err"]
        if err is not None:
            raise ScriptFailed(str(err))
        ok = value["ok"]
        if ok is not None:
            return str(ok)
        out = []
        i = 1
        while value[i] is not None:
            out.append(self._reply(value[i]))
            i += 1
        return out

    # -- cjson --------------------------------------------------------------------------------
    def _decode(self, text: str) -> Any:
        cached = self._decoded.get(text)
        if cached is not None:
            return cached
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ScriptFailed(f"cjson.decode: {exc}") from exc
        if isinstance(data, (dict, list)):
            data = self.lua.table_from(data, recursive=True)
        if len(text) <= DECODE_CACHE_TEXT:
            if len(self._decoded) >= DECODE_CACHE_SIZE:
                self._decoded.clear()
            self._decoded[text] = data
        return data

    def _plain(self, value: Any) -> Any:
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        items = list(value.items())
        n = len(items)
        if (
            n
            and all(isinstance(k, int) for k, _ in items)
            and {k for k, _ in items} == set(range(1, n + 1))
        ):
            return [self._plain(value[i]) for i in range(1, n + 1)]
        return {str(k): self._plain(v) for k, v in items}

    def _encode(self, value: Any) -> str:
        return json.dumps(self._plain(value), separators=(",", ":"), ensure_ascii=False)

    # -- redis.call -------------------------------------------------------------------------
    def _call(self, name: str, *raw: Any) -> Any:
        command = self._commands.get(name) or self._commands.get(name.upper())
        if command is None:
            raise ScriptFailed(f"unknown command {name!r} in the in-process Lua host")
        # numbers among the arguments are converted where a command stores or parses them
        # (HSET values, scores, counts), as Redis converts them to text
        result = command(*raw)
        if result is None:
            return False
        if isinstance(result, list):
            return self.lua.table_from(result)
        return result

    def _command_table(self) -> dict[str, _Command]:
        ks = self.keyspace

        def hset(key: str, *fv: Any) -> int:
            return ks.hset(key, zip(fv[::2], map(_text, fv[1::2]), strict=True))

        def hmget(key: str, *fields: str) -> list[str | bool]:
            values = (ks.hget(key, f) for f in fields)
            return [False if v is None else v for v in values]  # nil as Redis gives it

        def zadd(key: str, *sm: Any) -> int:
            return ks.zadd(key, zip((_score(s) for s in sm[::2]), sm[1::2], strict=True))

        def zscore(key: str, member: str) -> str | None:
            score = ks.zscore(key, member)
            return None if score is None else score_text(score)

        def zrangebyscore(key: str, low: str, high: str, *opts: str) -> list[str]:
            limit = None
            offset = 0
            if len(opts) == 3 and opts[0].upper() == "LIMIT":
                offset, limit = int(opts[1]), int(opts[2])
            members = ks.zset(key).by_score(_score(high))
            lo = _score(low)
            z = ks.zset(key)
            members = [m for m in members if z[m] >= lo][offset:]
            return members if limit is None or limit < 0 else members[:limit]

        def zrange(key: str, start: str, stop: str, *opts: str) -> list[str]:
            pairs = ks.zset(key).by_rank(int(start), int(stop))
            if opts and opts[0].upper() == "WITHSCORES":
                return [x for m, s in pairs for x in (m, score_text(s))]
            return [m for m, _ in pairs]

        def xadd(key: str, *args: Any) -> str | None:
            # the engine's form: XADD key [NOMKSTREAM] MAXLEN ~ n * field value
            opts = [str(a) for a in args]
            maxlen = None
            if opts and opts[0].upper() == "NOMKSTREAM":
                if not ks.exists(key):
                    return None
                opts = opts[1:]
            if opts and opts[0].upper() == "MAXLEN":
                at = 2 if opts[1] in ("~", "=") else 1
                maxlen, opts = int(opts[at]), opts[at + 1 :]
            if len(opts) != 3 or opts[0] != "*":
                raise ScriptFailed(
                    "the in-process XADD takes: key [NOMKSTREAM] [MAXLEN [~] n] * field value"
                )
            return ks.xadd(key, opts[2], maxlen)

        return {
            "XADD": xadd,
            "HGET": ks.hget,
            "HMGET": hmget,
            "HSET": hset,
            "HDEL": ks.hdel,
            "HINCRBY": lambda k, f, by: ks.hincrby(k, f, int(by)),
            "EXISTS": lambda *keys: sum(ks.exists(k) for k in keys),
            "DEL": ks.delete,
            "EXPIRE": lambda k, s: ks.expire(k, int(s)),
            "RPUSH": lambda k, *v: ks.rpush(k, *map(_text, v)),
            "LPOP": ks.lpop,
            "LLEN": ks.llen,
            "LRANGE": lambda k, a, b: ks.lrange(k, int(a), int(b)),
            "LINDEX": lambda k, i: ks.lindex(k, int(i)),
            "SADD": lambda k, *m: ks.sadd(k, *map(_text, m)),
            "SREM": ks.srem,
            "SMEMBERS": ks.smembers,
            "SCARD": ks.scard,
            "ZADD": zadd,
            "ZREM": ks.zrem,
            "ZSCORE": zscore,
            "ZPOPMIN": ks.zpopmin,
            "ZCARD": ks.zcard,
            "ZRANGEBYSCORE": zrangebyscore,
            "ZRANGE": zrange,
            "PUBLISH": ks.publish,
        }
