"""The embedded runtime's Redis: fakeredis, with the per-call costs of its Lua scripts taken out.

fakeredis runs ``EVAL``/``EVALSHA`` by handing the script's text to ``LuaRuntime.execute``, which
parses and compiles it every time (about 0.2 ms for the store's commit script on this project's
machines; a real Redis compiles a script once, when it is loaded), then runs a full Lua garbage
collection, and before each ``redis.call`` of the script walks every Lua global from Python to
refuse a script that created one (15-20 µs each, ~25 calls per embedded instance started). Here
the server's Lua runtime is wrapped so that ``execute`` runs the function compiled the first time
that text was seen, the full collection is left to Lua's own incremental collector, and the
global check asks a Lua function whether any global is new, walking them from Python only when one
is. Everything else is fakeredis's own ``eval``: the same KEYS/ARGV globals, ``redis.call`` bridge,
error messages (a compiled chunk and an executed one share the chunk name ``<python>``) and
refusal of new globals, so embedded and Redis semantics stay one.
"""

from __future__ import annotations

from typing import Any

import fakeredis
from fakeredis import _msgs
from fakeredis._clients._async import FakeAsyncRedisConnection, FakeReader, FakeWriter
from fakeredis.aioredis import AsyncFakeSocket
from fakeredis.commands_mixins.scripting_mixin import LUA_MODULE

MAX_CACHED_SCRIPTS = 256
"""Distinct script texts kept compiled per server; past it the cache starts over (the store has a handful)."""

_FULL_COLLECTION = "collectgarbage()"
"""What fakeredis's ``eval`` executes after every script (to free that call's KEYS and ARGV tables)."""

_NEW_GLOBAL = """
local expected, G, pairs = ..., _G, pairs
return function()
    for name in pairs(G) do
        if expected[name] == nil then return true end
    end
    return false
end
"""
"""A Lua function answering whether a global exists that is not in ``expected`` (one call, no Python walk)."""


class CompiledScripts:
    """A fakeredis server's Lua runtime whose ``execute`` compiles each distinct text once.

    fakeredis's ``eval`` and ``redis.call`` bridge are handed this instead of the runtime itself;
    attributes other than ``execute`` and ``globals`` are the runtime's own (``table_from``, ...).

    Args:
        runtime: the server's ``lupa`` ``LuaRuntime``.
        expected_globals: the globals a script may see (fakeredis's ``_lua_expected_globals``).
    """

    def __init__(self, runtime: Any, expected_globals: set[Any]) -> None:
        self.runtime = runtime
        self._compiled: dict[bytes | str, Any] = {}
        self.compiles = 0  # how many texts were compiled (tests read it)
        expected = runtime.table_from(dict.fromkeys(expected_globals, True))
        self._new_global = runtime.execute(_NEW_GLOBAL, expected)
        self._globals = _CheckedGlobals(self)

    def execute(self, code: bytes | str) -> Any:
        """Run ``code`` as a Lua chunk, compiling it only the first time it is seen."""
        if code == _FULL_COLLECTION:
            # Lua's incremental collector frees the per-call tables as the heap grows; a full
            # collection after every script costs 70 µs and frees nothing a script can see.
            return None
        function = self._compiled.get(code)
        if function is None:
            if len(self._compiled) >= MAX_CACHED_SCRIPTS:
                self._compiled.clear()
            try:
                function = self.runtime.compile(code)
            except LUA_MODULE.LuaError:
                # Not cached; execute() raises the error as fakeredis words it ("error loading code: ...").
                return self.runtime.execute(code)
            self._compiled[code] = function
            self.compiles += 1
        return function()

    def globals(self) -> _CheckedGlobals:
        """The Lua globals, as fakeredis's new-global check reads them."""
        return self._globals

    def has_new_global(self) -> bool:
        """Whether a script created a global (answered in Lua)."""
        return bool(self._new_global())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)


class _CheckedGlobals:
    """The Lua globals for fakeredis's ``_check_for_lua_globals``: walked only when one is new.

    That check computes ``set(globals.keys()) - expected`` and, when it is not empty, clears those
    globals and refuses the script; with no new global, no key can be unexpected, so ``keys()``
    answers with none and the walk from Python is skipped.
    """

    def __init__(self, scripts: CompiledScripts) -> None:
        self._scripts = scripts

    def keys(self) -> Any:
        if not self._scripts.has_new_global():
            return ()
        return self._scripts.runtime.globals().keys()

    def __setitem__(self, name: Any, value: Any) -> None:
        self._scripts.runtime.globals()[name] = value


class _ScriptCachingSocket(AsyncFakeSocket):
    """fakeredis's socket, handing its ``eval`` and ``redis.call`` the server's :class:`CompiledScripts`."""

    def _get_server_runtime(self, server: fakeredis.FakeServer) -> Any:
        runtime = super()._get_server_runtime(server)
        scripts: CompiledScripts | None = getattr(server, "_hutch_compiled_scripts", None)
        if scripts is None or scripts.runtime is not runtime:
            scripts = CompiledScripts(runtime, server._lua_expected_globals)  # type: ignore[attr-defined]
            server._hutch_compiled_scripts = scripts  # type: ignore[attr-defined]
        return scripts

    def _lua_redis_call(self, lua_runtime: Any, expected_globals: set[Any], op: bytes, *args: Any) -> Any:
        # The bridge was bound to the bare runtime when fakeredis created it: swap in the wrapper.
        scripts = self._get_server_runtime(self._server)
        return super()._lua_redis_call(scripts, expected_globals, op, *args)


class _ScriptCachingConnection(FakeAsyncRedisConnection):
    """fakeredis's connection (``_connect`` as fakeredis writes it) on a :class:`_ScriptCachingSocket`."""

    async def _connect(self) -> None:
        if self._server is None or not self._server.connected:
            raise self._connection_error_class(_msgs.CONNECTION_ERROR_MSG)
        self._sock = _ScriptCachingSocket(
            self._server,
            self.db,
            client_class=self._client_class,
            lua_modules=self._lua_modules,
            client_info=self._client_info,
        )
        self._reader = FakeReader(self._sock)
        self._writer = FakeWriter(self._sock)


def embedded_redis(server: fakeredis.FakeServer | None = None) -> fakeredis.aioredis.FakeRedis:
    """An asyncio fakeredis client (on ``server``, default a new one) whose scripts compile once per server."""
    return fakeredis.aioredis.FakeRedis(
        server=server or fakeredis.FakeServer(), connection_class=_ScriptCachingConnection
    )


def compiled_scripts(server: fakeredis.FakeServer) -> CompiledScripts | None:
    """The server's script cache, once a script ran on it through :func:`embedded_redis`."""
    scripts: CompiledScripts | None = getattr(server, "_hutch_compiled_scripts", None)
    return scripts
