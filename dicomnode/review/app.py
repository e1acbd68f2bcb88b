"""The review page's routes: small server-rendered pages (Jinja2), no JavaScript build.

::

    GET  /login, POST /login, POST /logout
    GET  /                                        overview: spool, destinations, activity
    GET  /quarantine                              list: reason, calling AE, modality, age; paged
    GET  /quarantine/{id}                         one item: facts, header diff, frames
    GET  /quarantine/{id}/thumb/{variant}/{n}.png variant: original (reviewer) | clean
    GET  /quarantine/{id}/image/{variant}/{n}.png the large view's picture
    GET  /quarantine/{id}/frame/{variant}/{n}     the large view, boxes, the rectangle tool
    POST /quarantine/{id}/requeue|release|region|delete   reviewer only
    GET  /dead-letter, GET /dead-letter/{destination}/{id}
    POST /dead-letter/{destination}/{id}/requeue  reviewer only

Every response carries the security headers (a CSP without inline script, frame-ancestors
none, no-store); every POST needs the session's CSRF token (and a same-origin Origin when
the browser sends one). Item ids must match the spool's id pattern and folders a plain
name: anything else, ``../`` in any encoding included, is a 404 before any path is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomnode import quarantine
from dicomnode.config import Config
from dicomnode.errors import ConfigError
from dicomnode.quarantine import Kind
from dicomnode.review.auth import LoginGuard, Session, Sessions, csrf_ok
from dicomnode.review.inspect import LARGE, MAX_FRAMES, THUMB, InspectError, Inspector
from dicomnode.review.items import AGES, FOLDER, ID, Entry, Filter, Index
from dicomnode.review.state import Activity, DestinationState, Event
from dicomnode.review.users import Role, User, UserStore
from dicomnode.spool import Spool

__all__ = ["Backend", "ReviewApp"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "dicomnode_review"
LOGIN_COOKIE = "dicomnode_login"
MAX_FORM = 64 * 1024
BOX_KINDS = ("found", "removed", "region", "remains")
JUSTIFICATIONS = {
    "not-phi": "what remains is not identifying (scale, labels, device text)",
    "no-text": "no text remains (the detector saw text where there is none)",
    "already-public": "what remains is the study's own pseudonym or a research label",
}
DONE = {
    "requeued": "The item went back to the pipeline.",
    "released": "The cleaned copy was released to its destinations.",
    "region-added": "The region rule was added, the node reloaded, and the item went back to "
    "the pipeline.",
    "deleted": "The item was deleted.",
    "dead-letter-requeued": "The object went back to its destination's queue.",
}
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Audit(Protocol):
    path: Path | None

    def write(self, event: str, **fields: Any) -> None: ...


@dataclass
class Backend:
    """What the page needs of the node (a test gives its own)."""

    spool: Spool
    config: Callable[[], Config]
    audit: Audit
    secret: bytes
    key: bytes  # signs the session cookies
    destinations: Callable[[], list[DestinationState]] = list
    activity: Activity = field(default_factory=Activity)
    reload: Callable[[], bool] = lambda: False
    submit: Callable[[str], None] = lambda item_id: None
    wake_forwarders: Callable[[], None] = lambda: None


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Bytes:
    """A small LRU of rendered pictures, bounded in bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._size = 0
        self._items: OrderedDict[Any, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[0]
            self._items[key] = (size, value)
            self._size += size
            while self._size > self.budget and len(self._items) > 1:
                _, (dropped, _) = self._items.popitem(last=False)
                self._size -= dropped


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _when(stamp: float | None) -> str:
    return "?" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _received(item_id: str) -> float | None:
    head = item_id.split("_", 1)[0]
    return int(head) / 1e9 if head.isdigit() and len(head) >= 19 else None


def _boxes(sidecar: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """The evidence's boxes per frame, checked: four whole numbers and a known kind."""
    evidence = sidecar.get("evidence")
    result: dict[int, list[dict[str, Any]]] = {}
    if not isinstance(evidence, dict) or not isinstance(evidence.get("frames"), list):
        return result
    for frame in evidence["frames"][:100000]:
        if not isinstance(frame, dict) or not isinstance(frame.get("index"), int):
            continue
        for box in frame.get("boxes") or []:
            if not isinstance(box, dict) or box.get("kind") not in BOX_KINDS:
                continue
            coords = box.get("box")
            if (
                not isinstance(coords, list)
                or len(coords) != 4
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in coords)
            ):
                continue
            x0, y0, x1, y1 = coords
            if x1 <= x0 or y1 <= y0:
                continue
            result.setdefault(frame["index"], []).append(
                {"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0, "kind": box["kind"], "box": coords}
            )
    return result


class ReviewApp:
    """The review page over one node (``backend``); ``asgi`` is what uvicorn serves."""

    def __init__(self, backend: Backend, *, inspector: Inspector | None = None) -> None:
        self.backend = backend
        settings = backend.config().review
        self.users = UserStore(settings.users_file)
        self.sessions = Sessions(backend.key, idle_s=settings.session_idle_minutes * 60)
        self.guard = LoginGuard()
        self.index = Index(backend.spool)
        self.inspector = inspector or Inspector(backend.config, backend.secret)
        self._headers: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._headers_lock = threading.Lock()
        self._thumbs = _Bytes(64 * 1024 * 1024)
        self._large = _Bytes(32 * 1024 * 1024)
        self._render_locks: dict[Any, threading.Lock] = {}
        self._render_lock = threading.Lock()
        self._warming = threading.Lock()
        self._login_slots = threading.BoundedSemaphore(2)  # argon2: 64 MiB each
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.filters["age"] = _age
        self.env.filters["when"] = _when
        routes = [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.overview, methods=["GET"]),
            Route("/quarantine", self.quarantine_list, methods=["GET"]),
            Route("/quarantine/{item_id}", self.quarantine_item, methods=["GET"]),
            Route(
                "/quarantine/{item_id}/thumb/{variant}/{frame:int}.png",
                self.thumbnail,
                methods=["GET"],
            ),
            Route(
                "/quarantine/{item_id}/image/{variant}/{frame:int}.png",
                self.image,
                methods=["GET"],
            ),
            Route(
                "/quarantine/{item_id}/frame/{variant}/{frame:int}",
                self.frame_page,
                methods=["GET"],
            ),
            Route("/quarantine/{item_id}/{action}", self.quarantine_action, methods=["POST"]),
            Route("/dead-letter", self.dead_letter_list, methods=["GET"]),
            Route("/dead-letter/{folder}/{item_id}", self.dead_letter_item, methods=["GET"]),
            Route(
                "/dead-letter/{folder}/{item_id}/requeue",
                self.dead_letter_requeue,
                methods=["POST"],
            ),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.starlette = Starlette(routes=routes)
        self.asgi: ASGIApp = _Guard(self.starlette)

    def close(self) -> None:
        self.inspector.close()

    # -- helpers ---------------------------------------------------------------------------

    @property
    def audited(self) -> bool:
        return self.backend.audit.path is not None

    def audit(self, event: str, user: str, **fields: Any) -> None:
        self.backend.audit.write(event, user=user, **fields)

    def render(
        self,
        request: Request,
        name: str,
        status: int = 200,
        session: Session | None = None,
        user: User | None = None,
        **context: Any,
    ) -> HTMLResponse:
        template = self.env.get_template(name)
        html = template.render(
            user=user,
            reviewer=user is not None and user.role is Role.REVIEWER,
            csrf=session.csrf if session is not None else "",
            audited=self.audited,
            done=DONE.get(request.query_params.get("done", "")),
            done_code=request.query_params.get("done", "")
            if request.query_params.get("done", "") in DONE
            else "",
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def who(self, request: Request) -> tuple[Session, User] | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        user = self.users.get(session.user)
        if user is None:  # removed since
            self.sessions.end(session)
            return None
        return session, user

    async def require(
        self, request: Request, role: Role = Role.VIEWER
    ) -> tuple[Session, User] | Response:
        found = self.who(request)
        if found is None:
            if request.method == "GET":
                return RedirectResponse("/login", status_code=303)
            return self.error(request, 401, "Log in first.")
        session, user = found
        if role is Role.REVIEWER and user.role is not Role.REVIEWER:
            return self.error(request, 403, "Only a reviewer may do this.", session, user)
        return found

    def error(
        self,
        request: Request,
        status: int,
        message: str,
        session: Session | None = None,
        user: User | None = None,
    ) -> HTMLResponse:
        return self.render(
            request, "error.html", status, session, user, message=message, title="Not possible"
        )

    async def form(self, request: Request, session: Session | None) -> dict[str, str]:
        """The POSTed form (URL-encoded, at most 64 KiB), after the same-origin and CSRF
        checks; raises :class:`_Denied`."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise _Denied(403, "This form was sent from another site.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise _Denied(413, "The form is too large.")
        try:
            parsed = parse_qs(
                body.decode("utf-8"),
                keep_blank_values=True,
                max_num_fields=32,
                strict_parsing=False,
            )
        except (UnicodeDecodeError, ValueError):
            raise _Denied(400, "The form cannot be read.") from None
        fields = {k: v[0] for k, v in parsed.items() if v}
        if session is not None and not csrf_ok(session, fields.get("csrf")):
            raise _Denied(403, "The form has expired or was not sent by this page; reload it.")
        return fields

    # -- login -----------------------------------------------------------------------------

    def _address(self, request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    async def login_page(self, request: Request, message: str = "", status: int = 200) -> Response:
        cookie, token = self.sessions.login_nonce()
        response = self.render(
            request, "login.html", status, login_token=token, message=message, title="Log in"
        )
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            max_age=3600,
            path="/login",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def login(self, request: Request) -> Response:
        try:
            fields = await self.form(request, None)
        except _Denied as denied:
            return self.error(request, denied.status, denied.message)
        if not self.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), fields.get("csrf")):
            return await self.login_page(request, "The form has expired; try again.", 403)
        name = fields.get("user", "").strip().lower()[:64]
        password = fields.get("password", "")[:1024]
        address = self._address(request)
        wait = self.guard.wait_s(name, address)
        known = self.users.get(name) is not None
        if wait > 0:
            if known:
                self.audit("review-login-refused", name, address=address, why="rate limit")
            return await self.login_page(
                request,
                f"Too many failed attempts; try again in {max(1, round(wait / 60))} minute(s).",
                429,
            )

        def check() -> User | None:
            with self._login_slots:
                return self.users.verify(name, password)

        user = await run_in_threadpool(check)
        if user is None:
            self.guard.failed(name, address)
            if known:
                self.audit("review-login-failed", name, address=address)
            return await self.login_page(request, "Wrong user name or password.", 401)
        self.guard.succeeded(name)
        cookie, _session = self.sessions.start(user.name)
        self.audit("review-login", user.name, role=user.role.value, address=address)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        found = self.who(request)
        if found is not None:
            session, user = found
            try:
                await self.form(request, session)
            except _Denied as denied:
                return self.error(request, denied.status, denied.message, session, user)
            self.sessions.end(session)
            self.audit("review-logout", user.name)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- overview --------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        found = await self.require(request)
        if isinstance(found, Response):
            return found
        session, user = found
        counts = await run_in_threadpool(self.backend.spool.counts)
        activity = self.backend.activity
        windows = {"hour": activity.totals(3600), "day": activity.totals(86400)}
        since_start = time.time() - activity.started
        return self.render(
            request,
            "overview.html",
            session=session,
            user=user,
            title="Overview",
            states=sorted(counts.items()),
            destinations=self.backend.destinations(),
            windows=windows,
            events=list(Event),
            started=activity.started,
            partial_day=since_start < 86400,
            grafana=self.backend.config().review.grafana_url,
        )

    # -- lists -----------------------------------------------------------------------------

    def _warm(self) -> None:
        """Read header summaries (modality...) of items not examined yet, out of process,
        in the background; one thread at a time."""
        if not self._warming.acquire(blocking=False):
            return

        def run() -> None:
            try:
                while True:
                    batch = self.index.unknown(limit=100)
                    if not batch:
                        return
                    paths = [str(self.index.path(e)) for e in batch]
                    try:
                        found = self.inspector.call("summaries", paths, timeout_s=120)
                    except InspectError:
                        found = [None] * len(batch)
                    for entry, summary in zip(batch, found, strict=True):
                        self.index.summaries.put(entry, summary or {"modality": ""})
                    time.sleep(0.05)  # the node's own work comes first
            finally:
                self._warming.release()

        threading.Thread(target=run, name="review-warm", daemon=True).start()

    async def _list(self, request: Request, kind: Kind) -> Response:
        found = await self.require(request)
        if isinstance(found, Response):
            return found
        session, user = found
        filt = Filter.of(dict(request.query_params))
        started = time.perf_counter()
        page = await run_in_threadpool(self.index.page, kind, filt)
        if page.pending or self.index.unknown(kind, limit=1):
            self._warm()
        summaries = {e.key: self.index.summaries.get(e) or {} for e in page.entries}
        reasons = page.reasons
        if kind is Kind.DEAD_LETTER:
            outcomes = {e.reason for e in self.index.entries(kind)}
            reasons = {**reasons, **dict.fromkeys(sorted(outcomes - set(reasons)), 0)}

        def link(**changes: Any) -> str:
            query = urlencode(filt.query(**changes))
            return request.url.path + (f"?{query}" if query else "")

        return self.render(
            request,
            "list.html",
            session=session,
            user=user,
            title="Quarantine" if kind is Kind.QUARANTINE else "Dead letters",
            kind=kind.value,
            page=page,
            filt=filt,
            ages=AGES,
            reasons=reasons,
            summaries=summaries,
            now=time.time(),
            link=link,
            projects=bool(self.backend.config().projects),
            took_ms=round((time.perf_counter() - started) * 1000),
        )

    async def quarantine_list(self, request: Request) -> Response:
        return await self._list(request, Kind.QUARANTINE)

    async def dead_letter_list(self, request: Request) -> Response:
        return await self._list(request, Kind.DEAD_LETTER)

    # -- one quarantined item --------------------------------------------------------------

    def _entry(self, request: Request) -> Entry:
        item_id = request.path_params.get("item_id", "")
        if not ID.fullmatch(item_id):
            raise _Denied(404, "No such item.")
        entry = self.index.find(Kind.QUARANTINE, item_id)
        if entry is None:
            raise _Denied(404, "No such item (it may have been retried, released or deleted).")
        return entry

    def _summary(self, entry: Entry) -> dict[str, str]:
        summary = self.index.summaries.get(entry)
        if summary is None:
            try:
                found = self.inspector.call("summaries", [str(self.index.path(entry))])
                summary = found[0] or {"modality": ""}
            except InspectError:
                summary = {"modality": ""}
            self.index.summaries.put(entry, summary)
        return summary

    def _header(self, entry: Entry) -> dict[str, Any]:
        config = self.backend.config()
        clean = self.index.clean_path(entry)
        key = (
            entry.key,
            entry.stamp,
            clean is not None,
            hashlib.sha256(config.model_dump_json().encode()).hexdigest(),
        )
        with self._headers_lock:
            cached = self._headers.get(key)
        if cached is not None:
            return cached
        try:
            result: dict[str, Any] = self.inspector.call(
                "header",
                str(self.index.path(entry)),
                None if clean is None else str(clean),
                entry.project,
                config,
            )
        except InspectError as exc:
            result = {"rows": [], "after_source": None, "after_error": None, "error": str(exc)}
        with self._headers_lock:
            self._headers[key] = result
            while len(self._headers) > 32:
                self._headers.popitem(last=False)
        return result

    def _frames(self, entry: Entry, summary: dict[str, str], sidecar: dict[str, Any]) -> int:
        count = summary.get("frames", "")
        evidence = sidecar.get("evidence")
        if isinstance(evidence, dict) and isinstance(evidence.get("frames_total"), int):
            return max(0, min(MAX_FRAMES, int(evidence["frames_total"])))
        return max(0, min(MAX_FRAMES, int(count))) if count.isdigit() else 1

    async def quarantine_item(self, request: Request) -> Response:
        found = await self.require(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            entry = self._entry(request)
        except _Denied as denied:
            return self.error(request, denied.status, denied.message, session, user)
        reviewer = user.role is Role.REVIEWER
        # nothing of the original unless it can be audited
        reviewer_view = reviewer and self.audited
        sidecar = self.index.sidecar(entry)
        summary = await run_in_threadpool(self._summary, entry)
        header = await run_in_threadpool(self._header, entry)
        rows = header.get("rows", [])
        if reviewer_view:
            self.audit("review-viewed-original", user.name, id=entry.id, what="header")
        else:
            # A viewer never gets the original's values, not even into the template.
            rows = [{**r, "before": None} for r in rows if r["status"] != "removed"]
        only_changed = request.query_params.get("changed") == "1"
        if only_changed:
            rows = [r for r in rows if r["status"] not in ("same",)]
        after = {r["label"].split(" (")[0]: r["after"] for r in header.get("rows", [])}
        device = (
            {"manufacturer": summary.get("manufacturer", ""), "model": summary.get("model", "")}
            if reviewer_view
            else {
                "manufacturer": after.get("Manufacturer") or "",
                "model": after.get("ManufacturerModelName") or "",
            }
        )
        boxes = _boxes(sidecar)
        kinds: dict[str, int] = {}
        for frame_boxes in boxes.values():
            for box in frame_boxes:
                kinds[box["kind"]] = kinds.get(box["kind"], 0) + 1
        evidence = sidecar.get("evidence") if isinstance(sidecar.get("evidence"), dict) else {}
        reason = quarantine.describe(entry.reason)
        config = self.backend.config()
        policy = None
        try:
            from dicomnode.review.regions import policy_of

            pixels = policy_of(config, entry.project)
            # where the region form writes (as _region does): the site policy, else the
            # site's regions file beside the bundled policy
            policy = pixels.policy or pixels.site_regions
        except ConfigError:
            policy = None
        return self.render(
            request,
            "item.html",
            session=session,
            user=user,
            title=f"Item {entry.id}",
            entry=entry,
            reason=reason,
            received=_received(entry.id),
            now=time.time(),
            summary=summary,
            device=device,
            header=header,
            rows=rows,
            only_changed=only_changed,
            show_original=reviewer_view,
            frames=self._frames(entry, summary, sidecar),
            boxes=boxes,
            kinds=kinds,
            box_kinds=BOX_KINDS,
            evidence_summary=str(evidence.get("summary", ""))[:500] if evidence else "",
            clean=entry.clean_copy,
            releasable=entry.folder == "text-remains" and entry.clean_copy,
            justifications=JUSTIFICATIONS,
            policy=policy,
            geometry=(summary.get("columns", ""), summary.get("rows", "")),
        )

    # -- pictures --------------------------------------------------------------------------

    def _variant(self, request: Request, user: User, entry: Entry) -> str:
        variant = str(request.path_params.get("variant", ""))
        if variant == "original":
            if user.role is not Role.REVIEWER:
                raise _Denied(403, "Only a reviewer sees the original pixels.")
            if not self.audited:
                raise _Denied(403, "Originals are shown only when the audit trail is on.")
            return variant
        if variant == "clean":
            if not entry.clean_copy:
                raise _Denied(404, "This item has no cleaned copy.")
            return variant
        raise _Denied(404, "No such picture.")

    def _masks(
        self, user: User, entry: Entry, variant: str
    ) -> dict[int, list[tuple[int, int, int, int]]]:
        """Boxes filled black before a picture is shown: what the pixel stage still found
        text in, on the cleaned copy, for a viewer."""
        if variant != "clean" or user.role is Role.REVIEWER:
            return {}
        masks: dict[int, list[tuple[int, int, int, int]]] = {}
        for index, boxes in _boxes(self.index.sidecar(entry)).items():
            for box in boxes:
                if box["kind"] == "remains":
                    x0, y0, x1, y1 = box["box"]
                    masks.setdefault(index, []).append((x0, y0, x1, y1))
        return masks

    def _render_lock_for(self, key: Any) -> threading.Lock:
        with self._render_lock:
            lock = self._render_locks.get(key)
            if lock is None:
                if len(self._render_locks) > 256:
                    self._render_locks.clear()
                lock = self._render_locks[key] = threading.Lock()
            return lock

    def _thumbnail_png(
        self,
        entry: Entry,
        variant: str,
        masks: dict[int, list[tuple[int, int, int, int]]],
        frame: int,
    ) -> bytes:
        key = (entry.key, entry.stamp, variant, bool(masks))
        with self._render_lock_for(key):
            pngs = self._thumbs.get(key)
            if pngs is None:
                path = (
                    self.index.path(entry)
                    if variant == "original"
                    else self.index.clean_path(entry)
                )
                if path is None:
                    raise _Denied(404, "No such picture.")
                try:
                    result = self.inspector.call(
                        "frames", str(path), THUMB, masks, None, self.backend.config()
                    )
                except InspectError as exc:
                    raise _Denied(422, f"The pixels cannot be shown: {exc}") from None
                pngs = result["pngs"]
                self._thumbs.put(key, pngs, sum(len(p) for p in pngs) + 1)
        if not 0 <= frame < len(pngs):
            raise _Denied(404, "No such frame.")
        return bytes(pngs[frame])

    def _large_png(
        self,
        entry: Entry,
        variant: str,
        masks: dict[int, list[tuple[int, int, int, int]]],
        frame: int,
    ) -> bytes:
        key = (entry.key, entry.stamp, variant, bool(masks), frame)
        png = self._large.get(key)
        if png is None:
            path = self.index.path(entry) if variant == "original" else self.index.clean_path(entry)
            if path is None or not 0 <= frame < MAX_FRAMES:
                raise _Denied(404, "No such picture.")
            try:
                result = self.inspector.call(
                    "frames", str(path), LARGE, masks, frame, self.backend.config()
                )
            except InspectError as exc:
                raise _Denied(422, f"The pixels cannot be shown: {exc}") from None
            if not result["pngs"]:
                raise _Denied(404, "No such frame.")
            png = bytes(result["pngs"][0])
            self._large.put(key, png, len(png))
        return bytes(png)

    def _audit_original(
        self, session: Session, user: User, entry: Entry, what: str, **more: Any
    ) -> None:
        """One ``review-viewed-original`` line; thumbnails once per item and session every
        10 minutes (a page shows dozens)."""
        if what == "frames":
            mark = f"frames:{entry.id}"
            last = session.notes.get(mark)
            if last is not None and time.monotonic() - last < 600:
                return
            session.notes[mark] = time.monotonic()
        self.audit("review-viewed-original", user.name, id=entry.id, what=what, **more)

    async def _picture(self, request: Request, large: bool) -> Response:
        found = await self.require(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            entry = self._entry(request)
            variant = self._variant(request, user, entry)
            frame = int(request.path_params["frame"])
            masks = self._masks(user, entry, variant)
            if variant == "original":
                if large:
                    self._audit_original(session, user, entry, "frame", frame=frame)
                else:
                    self._audit_original(session, user, entry, "frames")
            render = self._large_png if large else self._thumbnail_png
            png = await run_in_threadpool(render, entry, variant, masks, frame)
        except _Denied as denied:
            return Response(denied.message, status_code=denied.status, media_type="text/plain")
        return Response(png, media_type="image/png")

    async def thumbnail(self, request: Request) -> Response:
        return await self._picture(request, large=False)

    async def image(self, request: Request) -> Response:
        return await self._picture(request, large=True)

    async def frame_page(self, request: Request) -> Response:
        found = await self.require(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            entry = self._entry(request)
            variant = self._variant(request, user, entry)
        except _Denied as denied:
            return self.error(request, denied.status, denied.message, session, user)
        frame = int(request.path_params["frame"])
        sidecar = self.index.sidecar(entry)
        summary = await run_in_threadpool(self._summary, entry)
        frames = self._frames(entry, summary, sidecar)
        if not 0 <= frame < max(1, frames):
            return self.error(request, 404, "No such frame.", session, user)
        return self.render(
            request,
            "frame.html",
            session=session,
            user=user,
            title=f"Frame {frame + 1} of {entry.id}",
            entry=entry,
            variant=variant,
            frame=frame,
            frames=frames,
            boxes=_boxes(sidecar).get(frame, []),
            box_kinds=BOX_KINDS,
            geometry=(summary.get("columns", ""), summary.get("rows", "")),
            clean=entry.clean_copy,
        )

    # -- actions ---------------------------------------------------------------------------

    async def quarantine_action(self, request: Request) -> Response:
        found = await self.require(request, Role.REVIEWER)
        if isinstance(found, Response):
            return found
        session, user = found
        action = request.path_params.get("action", "")
        handlers: dict[str, Callable[[Entry, dict[str, str], User], Awaitable[Response]]] = {
            "requeue": self._requeue,
            "release": self._release,
            "region": self._region,
            "delete": self._delete,
        }
        try:
            fields = await self.form(request, session)
            if action not in handlers:
                raise _Denied(404, "No such action.")
            entry = self._entry(request)
            if not self.audited:
                raise _Denied(403, "Actions need the audit trail (logging.audit_file).")
            if fields.get("confirm") != "yes":
                raise _Denied(400, "Tick the box to confirm, then send the form again.")
            return await handlers[action](entry, fields, user)
        except _Denied as denied:
            return self.error(request, denied.status, denied.message, session, user)

    async def _requeue(self, entry: Entry, fields: dict[str, str], user: User) -> Response:
        self.audit("review-requeued", user.name, id=entry.id, reason=entry.reason)
        if not self.backend.spool.requeue_item(entry.folder, entry.id):
            raise _Denied(404, "The item is gone (retried, released or deleted meanwhile).")
        self.backend.submit(entry.id)
        return RedirectResponse("/quarantine?done=requeued", status_code=303)

    def _destinations(self, entry: Entry) -> list[str]:
        config = self.backend.config()
        if not config.projects:
            return [d.name for d in config.destinations]
        for project in config.projects:
            if project.name == entry.project:
                return list(project.destinations)
        raise _Denied(409, f"Project {entry.project} is not configured any more.")

    async def _release(self, entry: Entry, fields: dict[str, str], user: User) -> Response:
        if entry.folder != "text-remains" or not entry.clean_copy:
            raise _Denied(409, "Only a text-remains item with a cleaned copy can be released.")
        justification = fields.get("justification", "")
        if justification not in JUSTIFICATIONS:
            raise _Denied(400, "Choose why what remains is not PHI.")
        note = fields.get("note", "")
        if len(note) > 2000:
            raise _Denied(400, "The note is longer than 2000 characters.")
        destinations = self._destinations(entry)
        # The note is free text written while looking at the original: it may quote what
        # the reviewer saw. Only its length goes to the audit trail.
        self.audit(
            "released",
            user.name,
            id=entry.id,
            reason=entry.reason,
            justification=justification,
            note_chars=len(note),
            destinations=destinations,
        )
        released = await run_in_threadpool(
            self.backend.spool.release, entry.folder, entry.id, destinations
        )
        if not released:
            raise _Denied(404, "The item or its cleaned copy is gone.")
        self.backend.wake_forwarders()
        return RedirectResponse("/quarantine?done=released", status_code=303)

    async def _region(self, entry: Entry, fields: dict[str, str], user: User) -> Response:
        from dicomnode.review.regions import append_region, policy_of, region_rule

        try:
            box = tuple(int(fields.get(k, "")) for k in ("x0", "y0", "x1", "y1"))
        except ValueError:
            raise _Denied(400, "Give the box as four whole numbers of pixels.") from None
        summary = await run_in_threadpool(self._summary, entry)
        try:
            rule = region_rule(summary, box, user=user.name, item_id=entry.id)  # type: ignore[arg-type]
            pixels = policy_of(self.backend.config(), entry.project)
        except ConfigError as exc:
            raise _Denied(400, str(exc)) from None
        # A site policy takes the rule; the bundled one is never written: the site's regions
        # file (pixels.site_regions) is, and the policy reads it.
        policy = pixels.policy or pixels.site_regions
        try:
            await run_in_threadpool(append_region, policy, rule, regions_only=pixels.policy is None)
        except ConfigError as exc:
            raise _Denied(400, f"The rule was not added: {exc}") from None
        self.audit(
            "review-region-added",
            user.name,
            id=entry.id,
            policy=str(policy),
            box=list(box),
            size=f"{summary.get('columns')}x{summary.get('rows')}",
        )
        if not await run_in_threadpool(self.backend.reload):
            raise _Denied(
                500,
                "The rule was added but the node refused to reload (the log says why); the item "
                "stays in quarantine.",
            )
        self.audit("review-requeued", user.name, id=entry.id, reason=entry.reason)
        if self.backend.spool.requeue_item(entry.folder, entry.id):
            self.backend.submit(entry.id)
        return RedirectResponse("/quarantine?done=region-added", status_code=303)

    async def _delete(self, entry: Entry, fields: dict[str, str], user: User) -> Response:
        self.audit("review-deleted", user.name, id=entry.id, reason=entry.reason)
        if not self.backend.spool.delete_quarantined(entry.folder, entry.id):
            raise _Denied(404, "The item is gone (retried, released or deleted meanwhile).")
        return RedirectResponse("/quarantine?done=deleted", status_code=303)

    # -- dead letters ----------------------------------------------------------------------

    def _dead_letter(self, request: Request) -> Entry:
        folder = request.path_params.get("folder", "")
        item_id = request.path_params.get("item_id", "")
        if not FOLDER.fullmatch(folder) or not ID.fullmatch(item_id):
            raise _Denied(404, "No such item.")
        entry = self.index.find(Kind.DEAD_LETTER, item_id, folder)
        if entry is None:
            raise _Denied(404, "No such item (it may have been queued again).")
        return entry

    async def dead_letter_item(self, request: Request) -> Response:
        found = await self.require(request)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            entry = self._dead_letter(request)
        except _Denied as denied:
            return self.error(request, denied.status, denied.message, session, user)
        summary = await run_in_threadpool(self._summary, entry)
        return self.render(
            request,
            "dead_letter.html",
            session=session,
            user=user,
            title=f"Dead letter {entry.id}",
            entry=entry,
            reason=quarantine.describe(entry.reason),
            received=_received(entry.id),
            now=time.time(),
            summary=summary,
        )

    async def dead_letter_requeue(self, request: Request) -> Response:
        found = await self.require(request, Role.REVIEWER)
        if isinstance(found, Response):
            return found
        session, user = found
        try:
            fields = await self.form(request, session)
            entry = self._dead_letter(request)
            if not self.audited:
                raise _Denied(403, "Actions need the audit trail (logging.audit_file).")
            if fields.get("confirm") != "yes":
                raise _Denied(400, "Tick the box to confirm, then send the form again.")
            self.audit(
                "review-dead-letter-requeued", user.name, id=entry.id, destination=entry.folder
            )
            if not self.backend.spool.requeue_dead_letter(entry.folder, entry.id):
                raise _Denied(404, "The object is gone (queued again meanwhile).")
        except _Denied as denied:
            return self.error(request, denied.status, denied.message, session, user)
        self.backend.wake_forwarders()
        return RedirectResponse("/dead-letter?done=dead-letter-requeued", status_code=303)


class _Guard:
    """The outermost layer: security headers on every response, and an error that never
    reaches the log with its message (a library's message may quote a value)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        https = scope.get("scheme") == "https"
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control", b"server")
                ]
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    # same-origin, not no-referrer: with no-referrer a browser sends
                    # "Origin: null" on every form POST, which the same-origin check refuses.
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
                    (b"cache-control", b"max-age=3600" if static else b"no-store"),
                ]
                if https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)[-3:]
            where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
            log.error("review page: %s at %s", type(exc).__name__, where)
            if not started:
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": b"Internal error; see the log."})
