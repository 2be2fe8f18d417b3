"""What every console page gets: `Console`, the one object a page module's `routes(ctx)` takes.

A page endpoint is wrapped by `ctx.page` and may then rely on: a live session (else a GET is sent
to the sign-in page with 303, a POST gets the sign-in page with 401), a POST that passed the CSRF
and same-origin checks (else 403, nothing done), and a `GatewayError` it does not catch shown as a
message on an error page with the HTTP status of its gRPC status. Inside, a page uses:

- `await ctx.call(request, "admin", "ListBanks", req, ListBanksResponse)`: one gRPC call with the
  signed-in key (`ctx.stream` for a client-streaming RPC such as AddEntries);
- `await ctx.form(request)`: the posted form, uploads held in memory only (never on disk);
- `ctx.render(request, "banks/list.html", status=200, **values)`: a page in the base layout;
- `ctx.redirect(request, "/console/banks", flash="Bank created")`: post/redirect/get, with a
  message shown once on the next page (`kind="error"` for a red one);
- `describe(err)` (a `GatewayError` a page catches itself): the HTTP status and message to
  render its form again with (`ctx.gateway_error` renders them on a template directly).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from anyio import to_thread
from google.protobuf.message import Message
from hashsvc_client.v1 import admin_pb2
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hashsvc import metrics
from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.http.console.sessions import Sealer, Session, ensure_secret, load_secret
from hashsvc.http.gateway import Gateway, GatewayError
from hashsvc.http.problems import HTTP_STATUS
from hashsvc.store import Store, open_store

log = logging.getLogger("hashsvc.http.console")

PREFIX = "/console"
TEMPLATES = Path(__file__).resolve().parent / "templates"
SESSION_COOKIE = "hashsvc_console"
PRE_SESSION_COOKIE = "hashsvc_console_pre"  # binds the sign-in form's CSRF token
FLASH_COOKIE = "hashsvc_console_flash"
CSRF_FIELD = "csrf_token"
PRE_SESSION_TTL = 3600  # seconds a sign-in form stays good
FORM_FIELDS = 200
# Every page, in nav order: (module and path under /console, label). A page module is
# hashsvc/http/console/<name>.py with templates under templates/<name>/.
NAV: tuple[tuple[str, str], ...] = (
    ("banks", "Banks"), ("entries", "Entries"), ("exchanges", "Exchanges"),
    ("matches", "Matches"), ("snapshot", "Snapshot"), ("check", "Check an image"),
    ("evaluation", "Evaluation"),
)
Endpoint = Callable[[Request], Awaitable[Response]]


class Console:
    """The console's shared parts, made once per worker (see the module docstring)."""

    def __init__(self, config: ServerConfig, gateway: Callable[[], Gateway]) -> None:
        self.config = config
        self._gateway = gateway
        self._sealer: Sealer | None = None
        self.session_ttl = config.console_session_ttl
        # An upload (a hash list, an image) may be as large as the largest image accepted, and
        # at least 64 MiB (a million-line hash list); it is held in memory, never spooled.
        self.upload_limit = max(config.max_image_bytes, 64 << 20)
        self._store: Store | None = None
        self._store_lock = threading.Lock()  # store calls run on several threads at once
        self.templates = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
            trim_blocks=True, lstrip_blocks=True)
        self.templates.globals.update(prefix=PREFIX, nav=NAV,
                                      session_minutes=max(1, round(self.session_ttl / 60)))

    @property
    def sealer(self) -> Sealer:
        """Made at the first request, not with the app: `hashsvc serve` creates the secret
        before its workers start, but an app made elsewhere (a tool listing its routes) must
        not need one."""
        if self._sealer is None:
            path = self.config.resolved_console_secret_file
            if not path.exists():  # not made by `serve`: no other worker to race with
                ensure_secret(path)
            self._sealer = Sealer(load_secret(path))
        return self._sealer

    # ---- calls -----------------------------------------------------------------------------

    async def call(self, request: Request, service: str, method: str, message: Message,
                   response_type: type[Message]) -> Message:
        return await self._gateway().call(service, method, message, response_type,
                                          session_of(request).key)

    async def stream(self, request: Request, service: str, method: str,
                     messages: Iterable[Message], response_type: type[Message]) -> Message:
        return await self._gateway().stream(service, method, messages, response_type,
                                            session_of(request).key)

    async def check_key(self, key: str) -> GatewayError | None:
        """None if `key` may administer (a ListBanks call with it succeeds), else why not."""
        try:
            await self._gateway().call("admin", "ListBanks", admin_pb2.ListBanksRequest(),
                                       admin_pb2.ListBanksResponse, key)
        except GatewayError as err:
            return err
        return None

    # ---- sessions in the store -------------------------------------------------------------

    async def store_call(self, body: Callable[[Store], Any]) -> Any:
        """`body(store)` on a worker thread (the store's calls block). A store that cannot be
        reached is a `GatewayError` UNAVAILABLE, shown as a 503 page like any failed call."""
        try:
            return await to_thread.run_sync(lambda: body(self._opened_store()))
        except HashsvcError as err:
            log.error("console: the store could not be reached for a session",
                      extra={"error": err.message})
            raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                               "the store cannot be reached to check the session; try again "
                               "shortly") from None

    def _opened_store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                self._store = open_store(self.config.store_target)
            return self._store

    async def session_of_cookie(self, request: Request) -> Session | None:
        session = self.sealer.open_session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        active = await self.store_call(lambda store: store.console_session_active(session.digest))
        return session if active else None

    # ---- pages -----------------------------------------------------------------------------

    def page(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint`, for signed-in analysts only, with every POST checked (module docstring)."""
        async def guarded(request: Request) -> Response:
            try:
                session = await self.session_of_cookie(request)
            except GatewayError as err:
                return self.gateway_error(request, err)
            if session is None:
                if request.method in ("GET", "HEAD"):
                    return RedirectResponse(f"{PREFIX}/signin", status_code=303)
                return self.render(request, "auth/signin.html", status=401,
                                   error="Your session has ended (signed out or expired): sign "
                                         "in again. Nothing was changed.")
            request.state.session = session
            if request.method == "POST":
                refusal = await self.refuse_post(request, session.id)
                if refusal is not None:
                    return refusal
            try:
                return await endpoint(request)
            except GatewayError as err:
                return self.gateway_error(request, err)
            finally:
                form = getattr(request.state, "form", None)
                if form is not None:
                    await form.close()
        return guarded

    async def refuse_post(self, request: Request, binding: str) -> Response | None:
        """A 403 page if this POST is cross-origin or lacks the CSRF token bound to `binding`
        (the session id, or the pre-session id of the sign-in form); None if it may go on."""
        reason = cross_origin(request)
        if reason is None:
            try:
                form = await self.form(request)
            except _FormRefused as refused:
                return self.render(request, "error.html", status=refused.status,
                                   error=refused.message)
            token = form.get(CSRF_FIELD)
            if not self.sealer.csrf_valid(binding, token if isinstance(token, str) else None):
                reason = ("the form's security token is missing or is not this session's "
                          "(the page may be from before a sign-out): reload the page and "
                          "try again")
        if reason is None:
            return None
        log.warning("console POST refused", extra={"path": request.url.path, "why": reason})
        return self.render(request, "error.html", status=403,
                           error=f"Refused: {reason}. Nothing was changed.")

    async def form(self, request: Request) -> FormData:
        """The posted form (url-encoded or multipart); read once, then the same object. Files
        are held in memory (`upload_limit`); a body over it is refused with 413."""
        cached = getattr(request.state, "form", None)
        if isinstance(cached, FormData):
            return cached
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.upload_limit:
            raise _FormRefused(413, f"the upload is over {self.upload_limit:,} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        stream = _bounded(request.stream(), self.upload_limit)
        try:
            if kind == "multipart/form-data":
                parser = MultiPartParser(request.headers, stream, max_files=4,
                                         max_fields=FORM_FIELDS, max_part_size=1 << 20)
                parser.spool_max_size = self.upload_limit + 1  # memory only: never a disk file
                form = await parser.parse()
            elif kind == "application/x-www-form-urlencoded":
                form = await FormParser(request.headers, stream, max_fields=FORM_FIELDS,
                                        max_part_size=1 << 20).parse()
            else:
                raise _FormRefused(415, "a form post must be application/x-www-form-urlencoded "
                                        f"or multipart/form-data, not {kind or 'no content type'}")
        except MultiPartException as err:
            raise _FormRefused(400, f"the form could not be read: {err.message}") from None
        except ClientDisconnect:  # an everyday event, as for the API (bodies.py): no trace
            metrics.HTTP_REFUSED.labels("disconnected").inc()
            raise _FormRefused(400, "the browser went away before the form arrived") from None
        request.state.form = form
        return form

    def render(self, request: Request, template: str, *, status: int = 200,
               **values: Any) -> HTMLResponse:
        """`template` in the base layout: the nav, the sign-out button and any flash message
        are filled in; every form should carry `{{ csrf_field() }}`."""
        session: Session | None = getattr(request.state, "session", None)
        pre_session = None
        if session is None:
            pre_session = request.cookies.get(PRE_SESSION_COOKIE)
            if not pre_session or len(pre_session) > 64:
                pre_session = _new_id()
        binding = session.id if session is not None else pre_session
        assert binding is not None
        token = self.sealer.csrf_token(binding)
        flash = self.sealer.open_flash(request.cookies.get(FLASH_COOKIE))
        html = self.templates.get_template(template).render(
            request=request, signed_in=session is not None, csrf_token=token,
            csrf_field=lambda: _hidden(CSRF_FIELD, token), flash=flash,
            current=request.url.path, **values)
        response = HTMLResponse(html, status_code=status)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=PREFIX)
        if pre_session is not None:
            self._set_cookie(request, response, PRE_SESSION_COOKIE, pre_session, PRE_SESSION_TTL)
        return response

    def redirect(self, request: Request, path: str, *, flash: str | None = None,
                 kind: str = "ok") -> RedirectResponse:
        """303 to `path` (after a POST that did something), with a message for the next page."""
        response = RedirectResponse(path, status_code=303)
        if flash:
            self._set_cookie(request, response, FLASH_COOKIE,
                             self.sealer.seal_flash(flash, kind), 300)
        return response

    def gateway_error(self, request: Request, err: GatewayError, *,
                      template: str = "error.html", **values: Any) -> HTMLResponse:
        """`template` with the call's error as its message, at the HTTP status of its gRPC
        status (a refused bank name is 422, a missing bank 404, a revoked key 401...)."""
        if err.code == grpc.StatusCode.UNAUTHENTICATED:
            return self.render(request, "auth/signin.html", status=401,
                               error="This key is no longer accepted: sign in again.")
        status, message = describe(err)
        return self.render(request, template, status=status, error=message, **values)

    # ---- cookies ---------------------------------------------------------------------------

    def set_session_cookie(self, request: Request, response: Response, session: Session) -> None:
        self._set_cookie(request, response, SESSION_COOKIE, self.sealer.seal_session(session),
                         int(self.session_ttl))
        response.delete_cookie(PRE_SESSION_COOKIE, path=PREFIX)

    def _set_cookie(self, request: Request, response: Response, name: str, value: str,
                    max_age: int) -> None:
        """HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
        Path=/console, and Secure whenever the console is served over TLS."""
        response.set_cookie(name, value, max_age=max(1, max_age), path=PREFIX, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")


def describe(err: GatewayError) -> tuple[int, str]:
    """The HTTP status for a failed call, and the message to show: the service's own words (as
    a gRPC client would see them), never a trace."""
    status = HTTP_STATUS.get(err.code, 500)
    message = err.details or err.code.name.replace("_", " ").lower()
    if status >= 500:
        message = f"The server could not do this ({err.code.name}): {message}"
    return status, message[:1].upper() + message[1:]


def session_of(request: Request) -> Session:
    """The signed-in session of a request that went through `Console.page`."""
    session: Session = request.state.session
    return session


def cross_origin(request: Request) -> str | None:
    """Why this POST is not from the console's own pages, if a browser said so: a
    `Sec-Fetch-Site` other than same-origin, or an `Origin` other than this server's.

    `Origin: null` proves nothing either way: it is what a browser sends from the console's own
    pages under `Referrer-Policy: no-referrer` (and from sandboxed frames, which current
    browsers also mark `Sec-Fetch-Site: cross-site`). The CSRF token is checked regardless."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the form was posted from another site (Sec-Fetch-Site: {site[:20]})"
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            return "the form was posted from another origin"
    return None


class _FormRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _FormRefused(413, f"the upload is over {limit:,} bytes")
        yield chunk


def _new_id() -> str:
    import secrets

    return secrets.token_urlsafe(24)


def _hidden(name: str, value: str) -> Any:
    from markupsafe import Markup, escape

    return Markup(f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">')
