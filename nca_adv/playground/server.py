"""The playground's thin web layer (aiohttp): pages and static files from the package, one
WebSocket per tab, each holding one session (:mod:`nca_adv.playground.sessions`).

- The browser sends small JSON actions; the server answers each with a binary frame
  (``sessions.pack_frame``) or a one-line ``{"type": "error"}`` and changes nothing.
- The CA runs in worker threads (``run_in_executor``), never on the event loop; one lock
  per session orders its actions and steps; a playing session sends at most
  ``max_fps`` (30) frames per second, each ``steps_per_frame`` steps on (2 for MNIST, 4
  for the lizard by default: on a shared 2-core CPU the frames, not the steps, are what
  costs).
- Limits: ``max_sessions`` live sockets (the next tab gets a "busy" page or message),
  messages over 64 KiB are refused with an error (over 1 MiB the socket is closed),
  WebSockets from another site's page are refused (a page elsewhere cannot drive the CA),
  static files come from a fixed list, and no message can name a file or load a model.
  A session is dropped when its socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import socket
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from absl import logging
from aiohttp import WSMsgType, web

from nca_adv.errors import UserError
from nca_adv.playground.models import LizardModels, MnistModels
from nca_adv.playground.sessions import LizardSession, MnistSession, Session

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
    ):
        if max_sessions < 1:
            raise UserError(f"--max_sessions must be >= 1, got {max_sessions}")
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
        app = web.Application(middlewares=[_security_headers])
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

    async def page(self, request: web.Request) -> web.Response:
        name = PAGES[request.path]
        if name != "index.html" and self.busy():
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
        ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_LIMIT, heartbeat=30.0)
        await ws.prepare(request)
        if self.busy():
            await ws.send_json(
                {
                    "type": "busy",
                    "message": f"the playground is busy: {self.max_sessions} sessions are "
                    "open (close a tab, or start the server with a larger --max_sessions)",
                }
            )
            await ws.close()
            return ws
        sid = next(self._ids)
        session = self.factories[request.match_info["kind"]]()
        self.sessions[sid] = session
        lock, wake = asyncio.Lock(), asyncio.Event()
        player = asyncio.create_task(self._play(ws, session, lock, wake))
        try:
            await ws.send_json(session.hello())
            async with lock:
                await ws.send_bytes(await self._run(session.frame))
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                async with lock:
                    reply = await self._run(_answer, session, msg.data)
                    if isinstance(reply, dict):
                        await ws.send_json(reply)
                    else:
                        await ws.send_bytes(reply)
                if session.playing:
                    wake.set()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            player.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await player
            del self.sessions[sid]  # the session's state goes with it
        return ws

    async def _play(self, ws, session: Session, lock: asyncio.Lock, wake: asyncio.Event):
        """While the session plays: a tick and a frame every ``frame_interval`` at most."""
        loop = asyncio.get_running_loop()
        while not ws.closed:
            if not session.playing:
                wake.clear()
                await wake.wait()
                continue
            start = loop.time()
            async with lock:
                frame = await self._run(_tick_and_frame, session)
                if frame is not None:
                    await ws.send_bytes(frame)
            await asyncio.sleep(max(0.0, self.frame_interval - (loop.time() - start)))

    async def _start_pool(self, app) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="playground-ca")

    async def _stop_pool(self, app) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _answer(session: Session, raw) -> dict | bytes:
    """An action's reply, in one trip to a worker thread: the error, or the new frame."""
    return session.handle(raw) or session.frame()


def _tick_and_frame(session: Session) -> bytes | None:
    return session.frame() if session.tick() else None


@web.middleware
async def _security_headers(request, handler):
    response = await handler(request)
    if not isinstance(response, web.WebSocketResponse):
        response.headers.update(SECURITY_HEADERS)
    return response


def _same_origin(request: web.Request) -> bool:
    """A browser names the page that opens a WebSocket (Origin); only this server's own
    pages may. Clients that are not browsers send no Origin and are let through."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def serve(playground: Playground, sock: socket.socket, ready=None) -> None:
    """Serve on the bound ``sock`` until cancelled (Ctrl-C); ``ready(url)`` once up."""
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
