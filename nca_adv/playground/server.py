"""The playground's thin web layer (aiohttp): pages and static files from the package, one
WebSocket per tab, each holding one session (:mod:`nca_adv.playground.sessions`).

- The browser sends small JSON actions; the server answers each with a binary frame
  (``sessions.pack_frame``) or a one-line ``{"type": "error"}`` and changes nothing.
- The CA runs in worker threads (``run_in_executor``), never on the event loop; one lock
  per session orders its actions and steps; a playing session sends at most
  ``max_fps`` (30) frames per second, each ``steps_per_frame`` steps on (2 for MNIST, 4
  for the lizard by default: on a shared 2-core CPU the frames, not the steps, are what
  costs).
- Fairness: each session has at most one job on the worker threads at a time, and no job
  is longer than ``sessions.CHUNK_STEPS`` steps (a long ``step`` action runs as several
  jobs, each queued behind the other sessions' jobs), so the workers go round the sessions.
- Limits: ``max_sessions`` live sockets (the next tab gets a "busy" page or message, after
  a short wait for a tab that is just leaving), messages over 64 KiB are refused with an
  error (over 1 MiB the socket is closed), WebSockets from another site's page are
  refused (a page elsewhere cannot drive the CA), requests whose Host is not a name this
  server was started for get 403 (DNS rebinding), static files come from a fixed list,
  and no message can name a file or load a model.
- Sessions nobody watches: a page closes its socket when it is left (also into the
  back/forward cache), pings while it is open and says when it is hidden. A hidden page's
  session, or one that has sent nothing for ``idle_after`` seconds (a page the browser
  froze), stops computing; after ``close_after`` seconds of silence its socket is closed
  and the session freed. A session is dropped when its socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import logging as pylogging
import socket
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from absl import logging

from nca_adv.errors import UserError
from nca_adv.extras import require
from nca_adv.playground.models import LizardModels, MnistModels
from nca_adv.playground.sessions import CHUNK_STEPS, LizardSession, MnistSession, Session

_aiohttp = require("aiohttp", "playground", "the playground")
WSMsgType, web = _aiohttp.WSMsgType, require("aiohttp.web", "playground")
HttpProcessingError = require("aiohttp.http_exceptions", "playground").HttpProcessingError

STATIC = Path(str(resources.files("nca_adv") / "playground" / "static"))
PAGES = {"/": "index.html", "/mnist": "mnist.html", "/lizard": "lizard.html"}
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
HARD_MESSAGE_LIMIT = 1024 * 1024  # aiohttp closes the socket past this; 64 KiB get an error
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SLOT_WAIT_S = 2.0  # a page that is leaving closes its socket as the next page loads


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a one-line
    :class:`UserError` (port in use, no permission, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host={host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not over a live server
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use: pick another with --port") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"no permission to listen on port {port} (--port >= 1024)") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class Playground:
    """The server's state: the models, the live sessions, the worker threads."""

    def __init__(
        self,
        mnist_models: MnistModels,
        lizard_models: LizardModels,
        max_sessions: int = 8,
        seed: int = 0,
        max_fps: float = 30.0,
        workers: int = 4,
        host: str = "127.0.0.1",
        idle_after: float = 30.0,
        close_after: float = 120.0,
        chunk_steps: int = CHUNK_STEPS,
    ):
        if max_sessions < 1:
            raise UserError(f"--max_sessions must be >= 1, got {max_sessions}")
        self.host_names = allowed_host_names(host)
        self.any_ip = host.strip("[]") in WILDCARD_HOSTS
        self.idle_after, self.close_after = idle_after, close_after
        self.chunk_steps = chunk_steps
        self.factories = {
            "mnist": lambda: MnistSession(mnist_models, seed=seed),
            "lizard": lambda: LizardSession(lizard_models, seed=seed),
        }
        self.max_sessions = max_sessions
        self.frame_interval = 1.0 / max_fps
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self.static_files = {p.name: p for p in STATIC.iterdir() if p.suffix in CONTENT_TYPES}

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(middlewares=[_security_headers, self._check_host])
        for path in PAGES:
            app.router.add_get(path, self.page)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/ws/{kind:mnist|lizard}", self.websocket)
        app.on_startup.append(self._start_pool)
        app.on_cleanup.append(self._stop_pool)
        return app

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def busy(self) -> bool:
        return len(self.sessions) >= self.max_sessions

    async def _wait_for_slot(self) -> bool:
        """Whether a session slot is free, waiting up to ``SLOT_WAIT_S`` for one (the page
        a reader just left closes its socket while the next page loads)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLOT_WAIT_S
        while self.busy() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.busy()

    @web.middleware
    async def _check_host(self, request: web.Request, handler):
        """Only the Host names this server was started for (a page on another name that
        resolves here, DNS rebinding, gets nothing)."""
        if not self.host_allowed(request):
            raise web.HTTPForbidden(text="unknown Host: use the address the server printed")
        return await handler(request)

    def host_allowed(self, request: web.Request) -> bool:
        name, port = split_host(request.host)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local_port = sockname[1] if sockname else None
        if port is None:
            port = 80
        if local_port is not None and port != local_port:
            return False
        if name in self.host_names:
            return True
        if self.any_ip:  # --host=0.0.0.0: any address of this machine (never a DNS name)
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                return True
        return False

    async def page(self, request: web.Request) -> web.Response:
        name = PAGES[request.path]
        if name != "index.html" and not await self._wait_for_slot():
            return self._file("busy.html", status=503)
        return self._file(name)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.static_files:
            raise web.HTTPNotFound(text="no such file")
        return self._file(name)

    def _file(self, name: str, status: int = 200) -> web.Response:
        path = self.static_files[name]
        return web.Response(
            body=path.read_bytes(), status=status, content_type=CONTENT_TYPES[path.suffix]
        )

    # ------------------------------------------------------------------ sessions
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            raise web.HTTPForbidden(text="WebSocket from another site's page refused")
        # No compression: on this machine's own network it costs more CPU than it saves,
        # and aiohttp compresses large frames in tasks that outlive a tab that leaves.
        ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_LIMIT, heartbeat=30.0, compress=False)
        await ws.prepare(request)
        if not await self._wait_for_slot():
            with contextlib.suppress(*GONE):
                await ws.send_json(
                    {
                        "type": "busy",
                        "message": f"The playground is busy: {self.max_sessions} sessions are "
                        "open. Close another tab and reload this page, or start the server "
                        "with a larger --max_sessions.",
                    }
                )
                await ws.close()
            return ws
        sid = next(self._ids)
        session = self.factories[request.match_info["kind"]]()
        self.sessions[sid] = session
        loop = asyncio.get_running_loop()
        lock, wake = asyncio.Lock(), asyncio.Event()
        seen = [loop.time()]  # when the page last spoke
        player = asyncio.create_task(self._play(ws, session, lock, wake))
        watcher = asyncio.create_task(self._watch(ws, session, seen, wake))
        try:
            await ws.send_json(session.hello())
            async with lock:
                await ws.send_bytes(await self._run(session.frame))
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                seen[0] = float("inf")  # while answering, the page is not silent
                session.unwatched = False
                reply = await self._answer(session, lock, msg.data)
                seen[0] = loop.time()
                if isinstance(reply, dict):
                    await ws.send_json(reply)
                else:
                    await ws.send_bytes(reply)
                if session.running:
                    wake.set()
        except (*GONE, asyncio.CancelledError):
            pass
        finally:
            for task in (player, watcher):
                task.cancel()
            for task in (player, watcher):
                with contextlib.suppress(asyncio.CancelledError, *GONE):
                    await task
            del self.sessions[sid]  # the session's state goes with it
        return ws

    async def _answer(self, session: Session, lock: asyncio.Lock, raw) -> dict | bytes:
        """An action's reply: the error, or the frame after it. A long ``step`` runs as
        jobs of at most ``chunk_steps`` steps, the lock let go between them, so that the
        other sessions' jobs take their turns on the workers."""
        async with lock:
            error = await self._run(session.handle, raw, True)
            if error is not None:
                return error
        while session.pending_steps:
            async with lock:
                await self._run(session.run_pending, self.chunk_steps)
        async with lock:
            return await self._run(session.frame)

    async def _play(self, ws, session: Session, lock: asyncio.Lock, wake: asyncio.Event):
        """While the session plays (and someone watches): a tick and a frame every
        ``frame_interval`` at most."""
        loop = asyncio.get_running_loop()
        while not ws.closed:
            if not session.running:
                wake.clear()
                await wake.wait()
                continue
            start = loop.time()
            async with lock:
                frame = await self._run(_tick_and_frame, session)
                if frame is not None and not ws.closed:
                    await ws.send_bytes(frame)
            await asyncio.sleep(max(0.0, self.frame_interval - (loop.time() - start)))

    async def _watch(self, ws, session: Session, seen: list, wake: asyncio.Event):
        """A page pings while visible: after ``idle_after`` s of silence its session stops
        computing, after ``close_after`` s the socket is closed (the slot is freed)."""
        loop = asyncio.get_running_loop()
        period = max(0.05, min(self.idle_after, self.close_after) / 4)
        while not ws.closed:
            await asyncio.sleep(period)
            quiet = loop.time() - seen[0]
            if quiet >= self.close_after:
                with contextlib.suppress(*GONE):
                    await ws.close(message=b"nobody watched this session")
                return
            if quiet >= self.idle_after and not session.unwatched:
                session.unwatched = True  # the player waits until the page speaks
                wake.set()

    async def _start_pool(self, app) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="playground-ca")

    async def _stop_pool(self, app) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _tick_and_frame(session: Session) -> bytes | None:
    return session.frame() if session.tick() else None


GONE = (ConnectionResetError, ConnectionError)  # a tab that left mid-frame


@web.middleware
async def _security_headers(request, handler):
    try:
        response = await handler(request)
    except web.HTTPException as e:  # 403, 404, 405...: the same headers as any page
        e.headers.update(SECURITY_HEADERS)
        raise
    if not isinstance(response, web.WebSocketResponse):
        response.headers.update(SECURITY_HEADERS)
    return response


def split_host(host: str) -> tuple[str, int | None]:
    """A Host header -> (lower-case name without brackets, port or None)."""
    try:
        parts = urlsplit("//" + host)
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", -1


def allowed_host_names(host: str) -> frozenset[str]:
    """The Host names a server started with ``--host=host`` answers to: the loopback
    names, the --host itself, and for a wildcard (0.0.0.0, ::) this machine's names."""
    names = {*LOOPBACK_NAMES, host.strip("[]").lower()}
    if host.strip("[]") in WILDCARD_HOSTS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names - {""})


class _OneLine(pylogging.Filter):
    """aiohttp's server log: a client that sends a malformed or over-long request, or
    leaves mid-response, is one warning line, not a traceback."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, (HttpProcessingError, *GONE)):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}".replace("\n", " ")
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = pylogging.WARNING, "WARNING"
        return True


def quiet_server_log() -> None:
    logger = pylogging.getLogger("aiohttp.server")
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
    loop = asyncio.get_running_loop()

    def handle(loop, context):  # a write to a tab that has gone: one line, no traceback
        exc = context.get("exception")
        if isinstance(exc, GONE):
            logging.warning("a client left mid-frame: %s", exc)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def _same_origin(request: web.Request) -> bool:
    """A browser names the page that opens a WebSocket (Origin); only this server's own
    pages may. Clients that are not browsers send no Origin and are let through."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def serve(playground: Playground, sock: socket.socket, ready=None) -> None:
    """Serve on the bound ``sock`` until cancelled (Ctrl-C); ``ready(url)`` once up."""
    quiet_server_log()
    runner = web.AppRunner(playground.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if ready is not None:
        ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def log_host_warning(host: str) -> None:
    if not is_loopback(host):
        logging.warning(
            "serving on %s: anyone who can reach this address can use the playground "
            "(there is no authentication)",
            host,
        )
