"""The review page through Starlette's TestClient: every page for both roles, filters and
paging over 10,000 items, each action, what a viewer must never get (original values and
pixels, in the HTML and from the picture endpoints), login, CSRF, rate limits, ids that try
to leave the spool, and the audit trail and log. The node serving it on a real port, and the
``user`` commands, at the end."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from dicomnode.audit import AuditTrail
from dicomnode.config import Config
from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.errors import StartupError
from dicomnode.review.app import Backend, ReviewApp
from dicomnode.review.auth import LoginGuard
from dicomnode.review.state import Activity, DestinationState, Event
from dicomnode.review.users import Role, UserStore
from dicomnode.scrub import build_scrubber
from dicomnode.spool import Spool, new_id
from tests.conftest import SECRET
from tests.peers import free_port
from tests.phi import PHI, leaks, planted_dataset, to_bytes
from tests.test_cli import dicomnode

PASSWORDS = {"alice": "alice-password-1234", "victor": "victor-password-1234"}
ROWS, COLUMNS = 48, 64
TEXT = (5, 5, 25, 12)  # burned-in "text" of the original: found and removed
REMAINS = (40, 30, 50, 40)  # what the pixel stage still found on its cleaned copy
BRIGHT = 3000  # stored value of text pixels (2000 HU: white in the CT window)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


# -- the planted site ----------------------------------------------------------------------------


def _instance(frames: int = 1) -> Dataset:
    """A CT instance full of PHI (tests.phi), 64 x 48, with burned-in "text" blocks."""
    ds = planted_dataset()
    ds.ManufacturerModelName = "Scanmaster 3000"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsStored, ds.HighBit = 16, 15
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    pixels = np.full((frames, ROWS, COLUMNS), 1024, np.uint16)  # 0 HU: mid grey
    x0, y0, x1, y1 = TEXT
    pixels[:, y0:y1, x0:x1] = BRIGHT
    x0, y0, x1, y1 = REMAINS
    pixels[:, y0:y1, x0:x1] = BRIGHT
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds


def _evidence(frames: int) -> dict[str, Any]:
    boxes = [
        {"box": list(TEXT), "kind": "found"},
        {"box": list(TEXT), "kind": "removed"},
        {"box": [0, 0, COLUMNS, 4], "kind": "region"},
        {"box": list(REMAINS), "kind": "remains"},
    ]
    return {
        "frames": [{"index": n, "boxes": boxes} for n in range(frames)],
        "frames_total": frames,
        "summary": "text found on every frame; some remains after a second fill",
    }


@dataclass
class Site:
    root: Path
    spool: Spool
    config: Config
    audit_path: Path
    policy: Path
    app: ReviewApp
    submitted: list[str] = field(default_factory=list)
    reloads: list[float] = field(default_factory=list)
    woken: list[float] = field(default_factory=list)

    def plant(
        self, reason: str = "text-remains", *, clean: bool = True, frames: int = 1, ae: str = "CT_1"
    ) -> str:
        """A quarantined original with its sidecar (and cleaned copy) as the pixel stage
        leaves them."""
        item_id = new_id(ae)
        folder = self.spool.quarantine / reason
        folder.mkdir(parents=True, exist_ok=True)
        ds = _instance(frames)
        (folder / f"{item_id}.dcm").write_bytes(to_bytes(ds))
        sidecar: dict[str, Any] = {
            "id": item_id,
            "reason": reason,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stage": "pixels",
            "message": "burned-in text is still found after removal and a second fill",
        }
        if clean:
            copy = read_instance(to_bytes(ds))
            build_scrubber(self.config, secret=SECRET).scrub(copy)
            pixels = np.frombuffer(copy["PixelData"].value, np.uint16).reshape(
                frames, ROWS, COLUMNS
            )
            pixels = pixels.copy()
            x0, y0, x1, y1 = TEXT
            pixels[:, y0:y1, x0:x1] = 0
            copy["PixelData"].value = pixels.tobytes()
            (folder / f"{item_id}.clean.dcm").write_bytes(encode_instance(copy))
            sidecar["clean_copy"] = f"{item_id}.clean.dcm"
            sidecar["evidence"] = _evidence(frames)
        (folder / f"{item_id}.json").write_text(json.dumps(sidecar))
        return item_id

    def dead_letter(self, destination: str = "folder") -> str:
        item_id = new_id("CT_1")
        folder = self.spool.dead_letter / destination
        folder.mkdir(parents=True, exist_ok=True)
        copy = read_instance(to_bytes(_instance()))
        build_scrubber(self.config, secret=SECRET).scrub(copy)
        (folder / f"{item_id}.dcm").write_bytes(encode_instance(copy))
        (folder / f"{item_id}.json").write_text(
            json.dumps(
                {
                    "id": item_id,
                    "destination": destination,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "reason": "refused with 0xA900",
                    "outcome": "rejected",
                }
            )
        )
        return item_id

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]


def _make_site(root: Path, *, site_policy: bool = True) -> Site:
    policy = root / "pixels.yaml"
    policy.write_text("# the site's pixel policy\ndefault: check\nregions: []\n")
    audit_path = root / "audit" / "audit.jsonl"
    pixels: dict[str, str] = {"site_regions": str(root / "rules" / "site-regions.yaml")}
    if site_policy:
        pixels["policy"] = str(policy)
    config = Config.model_validate(
        {
            "spool": {"path": str(root / "spool")},
            "logging": {"audit_file": str(audit_path)},
            "destinations": [{"name": "folder", "type": "folder", "path": str(root / "out")}],
            "pixels": pixels,
            "review": {
                "users_file": str(root / "users.json"),
                "grafana_url": "http://grafana.example:3000/d/dicomnode",
            },
        }
    )
    spool = Spool(config.spool.path).create(["folder"])
    store = UserStore(config.review.users_file)
    store.add("alice", Role.REVIEWER, PASSWORDS["alice"])
    store.add("victor", Role.VIEWER, PASSWORDS["victor"])
    activity = Activity()
    activity.add(Event.RECEIVED, 5)
    activity.add(Event.CLEANED, 4)
    activity.add(Event.QUARANTINED, 1)
    site = Site(root, spool, config, audit_path, policy, app=None)  # type: ignore[arg-type]
    backend = Backend(
        spool=spool,
        config=lambda: config,
        audit=AuditTrail(audit_path),
        secret=SECRET,
        key=b"k" * 32,
        destinations=lambda: [
            DestinationState("folder", "folder", True, None, 0, time.time()),
            DestinationState("pacs", "dicom", False, "association rejected", 3, None),
        ],
        activity=activity,
        reload=lambda: site.reloads.append(time.time()) is None,
        submit=site.submitted.append,
        wake_forwarders=lambda: site.woken.append(time.time()),
    )
    site.app = ReviewApp(backend)
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    os.environ.setdefault("DICOMNODE_SECRET", SECRET.decode())
    made = _make_site(tmp_path_factory.mktemp("review"))
    yield made
    made.app.close()


def _client(site: Site, **kwargs: Any) -> TestClient:
    return TestClient(site.app.asgi, follow_redirects=False, **kwargs)


def _login(site: Site, user: str, **kwargs: Any) -> TestClient:
    client = _client(site, **kwargs)
    page = client.get("/login")
    token = CSRF.search(page.text)
    assert token, page.text
    response = client.post(
        "/login", data={"user": user, "password": PASSWORDS[user], "csrf": token.group(1)}
    )
    assert response.status_code == 303, response.text
    return client


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found
    return found.group(1)


@pytest.fixture(scope="module")
def reviewer(site: Site) -> TestClient:
    return _login(site, "alice")


@pytest.fixture(scope="module")
def viewer(site: Site) -> TestClient:
    return _login(site, "victor")


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


# -- access ----------------------------------------------------------------------------------


def test_nothing_without_login(site: Site) -> None:
    item = site.plant()
    client = _client(site)
    for path in (
        "/",
        "/quarantine",
        f"/quarantine/{item}",
        f"/quarantine/{item}/thumb/original/0.png",
        f"/quarantine/{item}/image/clean/0.png",
        f"/quarantine/{item}/frame/clean/0",
        "/dead-letter",
    ):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login", path
    for action in ("requeue", "release", "region", "delete"):
        response = client.post(f"/quarantine/{item}/{action}", data={"confirm": "yes"})
        assert response.status_code == 401, action
    # A forged or altered session cookie is no session.
    client.cookies.set("dicomnode_review", "abc.def")
    assert client.get("/").status_code == 303
    assert (site.spool.quarantine / "text-remains" / f"{item}.dcm").is_file()


def test_login_cookie_flags_and_logout(site: Site) -> None:
    client = _client(site, base_url="https://testserver")
    page = client.get("/login")
    assert "secure" in page.headers["set-cookie"].lower()
    token = CSRF.search(page.text)
    assert token
    response = client.post(
        "/login", data={"user": "victor", "password": PASSWORDS["victor"], "csrf": token.group(1)}
    )
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("dicomnode_review=")
    ).lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    assert "strict-transport-security" in response.headers
    assert client.get("/").status_code == 200
    csrf = _csrf(client, "/")
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/").status_code == 303  # the session is gone on the server
    # Over plain http (loopback), the cookie cannot be Secure or the browser would drop it.
    plain = _login(site, "victor")
    assert plain.get("/").status_code == 200


def test_every_page_for_both_roles(site: Site, reviewer: TestClient, viewer: TestClient) -> None:
    item = site.plant(frames=3)
    other = site.plant("pixel-stage-failed", clean=False, ae="US_2")
    dead = site.dead_letter()
    for client in (reviewer, viewer):
        pages = [
            "/",
            "/quarantine",
            "/quarantine?reason=text-remains",
            f"/quarantine/{item}",
            f"/quarantine/{item}?changed=1",
            f"/quarantine/{other}",
            f"/quarantine/{item}/frame/clean/0",
            f"/quarantine/{item}/frame/clean/2",
            "/dead-letter",
            f"/dead-letter/folder/{dead}",
        ]
        for path in pages:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:2000])
            headers = response.headers
            assert headers["x-frame-options"] == "DENY"
            assert "script-src 'self'" in headers["content-security-policy"]
            assert "unsafe-inline" not in headers["content-security-policy"]
            assert headers["cache-control"] == "no-store"
            assert "<script>" not in response.text  # no inline script anywhere
        for n in range(3):
            thumb = client.get(f"/quarantine/{item}/thumb/clean/{n}.png")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        assert client.get(f"/quarantine/{item}/image/clean/1.png").status_code == 200
    overview = viewer.get("/").text
    assert 'data-destination="pacs" data-answering="no"' in overview
    assert "association rejected" in overview
    assert 'id="grafana-link" href="http://grafana.example:3000/d/dicomnode"' in overview
    assert re.search(r'data-window="hour">.*?data-event="received">5<', overview, re.S)
    page = reviewer.get(f"/quarantine/{item}").text
    assert page.count('class="thumb"') == 6  # three frames, cleaned and original
    for kind in ("found", "removed", "region", "remains"):
        assert f'data-kind="{kind}"' in page
    assert 'id="action-release"' in page and 'id="action-region"' in page
    assert (
        f'/dead-letter/folder/{dead}/requeue"' in reviewer.get(f"/dead-letter/folder/{dead}").text
    )
    viewer_page = viewer.get(f"/quarantine/{item}").text
    assert 'id="actions"' not in viewer_page and "frames-original" not in viewer_page
    # The item without a cleaned copy: the header is scrubbed for display.
    assert 'data-source="scrubbed for display"' in viewer.get(f"/quarantine/{other}").text
    assert 'data-source="clean copy"' in page


def test_viewer_never_gets_original_values_or_pixels(
    site: Site, reviewer: TestClient, viewer: TestClient
) -> None:
    item = site.plant()
    seen = viewer.get(f"/quarantine/{item}").text
    assert leaks(seen.encode()) == [], leaks(seen.encode())
    assert 'data-status="changed"' in seen  # what changed is marked, without the original
    for path in (
        f"/quarantine/{item}/thumb/original/0.png",
        f"/quarantine/{item}/image/original/0.png",
        f"/quarantine/{item}/frame/original/0",
    ):
        assert viewer.get(path).status_code == 403, path
    # The cleaned copy as a viewer sees it: what the stage still found is black.
    x0, y0, x1, y1 = REMAINS
    masked = _png(viewer.get(f"/quarantine/{item}/image/clean/0.png").content)
    assert masked[y0:y1, x0:x1].max() == 0
    unmasked = _png(reviewer.get(f"/quarantine/{item}/image/clean/0.png").content)
    assert unmasked[y0:y1, x0:x1].min() == 255  # the CT window: 2000 HU is white
    # The reviewer does see the original (so the check above could fail).
    shown = reviewer.get(f"/quarantine/{item}").text
    assert {"name", "pid", "institution"} <= set(leaks(shown.encode()))
    original = _png(reviewer.get(f"/quarantine/{item}/image/original/0.png").content)
    x0, y0, x1, y1 = TEXT
    assert (
        original[y0:y1, x0:x1].min() == 255 and original[40, 10] == 102
    )  # 0 HU in C40 W400: 0.4 of white


def test_every_view_of_an_original_is_audited(site: Site, reviewer: TestClient) -> None:
    item = site.plant()
    reviewer.get(f"/quarantine/{item}")
    reviewer.get(f"/quarantine/{item}/thumb/original/0.png")
    reviewer.get(f"/quarantine/{item}/thumb/original/0.png")  # one line per 10 minutes
    reviewer.get(f"/quarantine/{item}/image/original/0.png")
    lines = [
        r
        for r in site.audit_lines()
        if r["event"] == "review-viewed-original" and r.get("id") == item
    ]
    assert [(r["user"], r["what"]) for r in lines] == [
        ("alice", "header"),
        ("alice", "frames"),
        ("alice", "frame"),
    ]
    assert leaks(site.audit_path.read_bytes()) == []


# -- lists -----------------------------------------------------------------------------------


def test_filters_and_paging_over_ten_thousand_items(tmp_path: Path) -> None:
    site = _make_site(tmp_path)
    try:
        now = time.time()
        reasons = ["text-remains", "unreadable", "too-large", "pixel-stage-failed"]
        for n in range(10_000):
            reason = reasons[n % 4]
            ae = "CT_1" if n % 5 else "US_2"
            item_id = f"{time.time_ns() - n * 10**9:020d}_{ae}_{n:08x}"
            folder = site.spool.quarantine / reason
            folder.mkdir(exist_ok=True)
            (folder / f"{item_id}.dcm").write_bytes(b"not read for a list")
            age = 3 * 86400 if n % 10 == 0 else 60
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now - age))
            (folder / f"{item_id}.json").write_text(
                json.dumps({"id": item_id, "reason": reason, "time": stamp, "stage": "read"})
            )
        client = _login(site, "victor")
        # How fast the list answers is measured in bench/review.py, not here.
        page = client.get("/quarantine")
        assert page.status_code == 200
        assert 'data-total="10000"' in page.text and page.text.count('class="item-row"') == 50

        def total(query: str) -> int:
            text = client.get(f"/quarantine?{query}").text
            found = re.search(r'data-total="(\d+)"', text)
            assert found
            return int(found.group(1))

        assert total("reason=unreadable") == 2500
        assert total("calling_ae=US_2") == 2000
        assert total("reason=text-remains&calling_ae=us_2") == 500
        assert total("age=gt1d") == 1000
        assert total("age=lt1h") == 9000
        # Paging: page 200 is the last; the newest first by default, oldest on request.
        last = client.get("/quarantine?page=200").text
        assert 'id="page-next"' not in last and 'id="page-prev"' in last
        first_rows = re.findall(r'data-id="([^"]+)"', client.get("/quarantine").text)
        oldest = re.findall(r'data-id="([^"]+)"', client.get("/quarantine?order=oldest").text)
        assert first_rows[0] > first_rows[1] and oldest[0] < oldest[1]
        assert first_rows[0] not in oldest
        next_link = re.search(
            r'id="page-next" href="([^"]+)"', client.get("/quarantine?reason=unreadable").text
        )
        assert (
            next_link
            and "reason=unreadable" in next_link.group(1)
            and "page=2" in next_link.group(1)
        )
        # A modality filter never parses 10,000 headers in the request: it answers with
        # what is known and says how many are still being read in the background.
        text = client.get("/quarantine?modality=CT").text
        assert 'id="pending"' in text or 'data-total="0"' in text
    finally:
        site.app.close()


def test_modality_filter_reads_headers_in_the_background(site: Site, viewer: TestClient) -> None:
    item = site.plant("unreadable", clean=False, ae="MR_9")
    deadline = time.time() + 60
    while True:
        text = viewer.get("/quarantine?modality=CT&calling_ae=MR_9").text
        if 'id="pending"' not in text:
            break
        assert time.time() < deadline, "header summaries never arrived"
        time.sleep(0.2)
    assert f'data-id="{item}"' in text
    assert 'data-total="0"' in viewer.get("/quarantine?modality=US&calling_ae=MR_9").text


# -- forms: CSRF, roles, ids ------------------------------------------------------------------


def test_csrf_is_required(site: Site, reviewer: TestClient) -> None:
    item = site.plant()
    path = f"/quarantine/{item}/delete"
    assert reviewer.post(path, data={"confirm": "yes"}).status_code == 403
    assert reviewer.post(path, data={"confirm": "yes", "csrf": "forged"}).status_code == 403
    csrf = _csrf(reviewer, f"/quarantine/{item}")
    other_site = reviewer.post(
        path, data={"confirm": "yes", "csrf": csrf}, headers={"origin": "https://evil.example"}
    )
    assert other_site.status_code == 403
    assert reviewer.post(path, data={"csrf": csrf}).status_code == 400  # not confirmed
    assert (site.spool.quarantine / "text-remains" / f"{item}.dcm").is_file()
    # The login form has its token too.
    fresh = _client(site)
    fresh.get("/login")
    response = fresh.post("/login", data={"user": "alice", "password": PASSWORDS["alice"]})
    assert response.status_code == 403
    assert reviewer.post(path, data={"confirm": "yes", "csrf": csrf}).status_code == 303


def test_a_viewer_cannot_act(site: Site, viewer: TestClient) -> None:
    item = site.plant()
    csrf = _csrf(viewer, f"/quarantine/{item}")
    for action in ("requeue", "release", "region", "delete"):
        response = viewer.post(
            f"/quarantine/{item}/{action}",
            data={
                "csrf": csrf,
                "confirm": "yes",
                "justification": "not-phi",
                "x0": "0",
                "y0": "0",
                "x1": "4",
                "y1": "4",
            },
        )
        assert response.status_code == 403, action
    dead = site.dead_letter()
    response = viewer.post(
        f"/dead-letter/folder/{dead}/requeue", data={"csrf": csrf, "confirm": "yes"}
    )
    assert response.status_code == 403
    assert (site.spool.quarantine / "text-remains" / f"{item}.dcm").is_file()
    assert (site.spool.dead_letter / "folder" / f"{dead}.dcm").is_file()


@pytest.mark.parametrize(
    "path",
    [
        "/quarantine/..%2F..%2Fusers.json",
        "/quarantine/%2e%2e%2f%2e%2e%2fusers.json",
        "/quarantine/..%252F..%252Fusers.json",
        "/quarantine/%2E%2E",
        "/quarantine/..",
        "/quarantine/../../etc/passwd",
        "/quarantine/....%2F%2F",
        "/quarantine/%00",
        "/quarantine/00000000000000000001_CT_1_deadbeef",  # the right form, not there
        "/quarantine/00000000000000000001_CT_1_deadbeef%2F..%2F..",
        "/quarantine/..%2Ftext-remains/thumb/original/0.png",
        "/quarantine/%2e%2e/image/clean/0.png",
        "/dead-letter/..%2F..%2Fquarantine/00000000000000000001_CT_1_deadbeef",
        "/dead-letter/..%2F/00000000000000000001_CT_1_deadbeef",
        "/dead-letter/folder/..%2F..%2Fusers.json",
        "/static/..%2F..%2Fusers.py",
        "/static/../app.py",
    ],
)
def test_ids_that_try_to_leave_the_spool_are_refused(
    site: Site, reviewer: TestClient, path: str
) -> None:
    response = reviewer.get(path, follow_redirects=True)
    if response.status_code == 200:
        # The client itself resolved the dot segments ("/quarantine/.." is "/"): a list
        # page, never a file outside the spool.
        assert ".." not in response.url.path and "%2" not in response.url.path, path
        assert response.url.path in ("/", "/quarantine", "/dead-letter"), response.url
    else:
        assert response.status_code in (403, 404, 405), (path, response.status_code)
    assert "argon2" not in response.text and "import " not in response.text


def test_posts_with_bad_ids_are_refused(site: Site, reviewer: TestClient) -> None:
    csrf = _csrf(reviewer, "/")
    for path in (
        "/quarantine/..%2F..%2Fusers.json/delete",
        "/quarantine/%2e%2e/delete",
        "/dead-letter/..%2Fquarantine/x/requeue",
    ):
        response = reviewer.post(path, data={"csrf": csrf, "confirm": "yes"})
        assert response.status_code in (404, 405), path
    assert (site.root / "users.json").is_file()


def test_login_is_rate_limited_per_user_and_per_address(site: Site) -> None:
    try:
        client = _client(site)

        def attempt(user: str, password: str) -> int:
            token = CSRF.search(client.get("/login").text)
            assert token
            return client.post(
                "/login", data={"user": user, "password": password, "csrf": token.group(1)}
            ).status_code

        assert [attempt("alice", "wrong-password-x") for _ in range(5)] == [401] * 5
        assert attempt("alice", PASSWORDS["alice"]) == 429  # even with the right password
        lines = [r for r in site.audit_lines() if r["event"].startswith("review-login-")]
        assert {r["event"] for r in lines} >= {"review-login-failed", "review-login-refused"}
        assert all(r["user"] == "alice" and "password" not in json.dumps(r) for r in lines)
        site.app.guard = LoginGuard()
        # Per address: many names from one address.
        codes = [attempt(f"nobody{n}", "wrong-password-x") for n in range(20)]
        assert codes == [401] * 20
        assert attempt("victor", PASSWORDS["victor"]) == 429
    finally:
        site.app.guard = LoginGuard()


# -- actions -----------------------------------------------------------------------------------


def _act(client: TestClient, item: str, action: str, **fields: str) -> Any:
    csrf = _csrf(client, f"/quarantine/{item}")
    return client.post(
        f"/quarantine/{item}/{action}", data={"csrf": csrf, "confirm": "yes", **fields}
    )


def test_requeue(site: Site, reviewer: TestClient) -> None:
    item = site.plant()
    response = _act(reviewer, item, "requeue")
    assert (
        response.status_code == 303 and response.headers["location"] == "/quarantine?done=requeued"
    )
    assert (site.spool.incoming / f"{item}.dcm").is_file()
    assert not list((site.spool.quarantine / "text-remains").glob(f"{item}*"))
    assert site.submitted[-1] == item
    assert 'data-done="requeued"' in reviewer.get(response.headers["location"]).text
    line = site.audit_lines()[-1]
    assert line["event"] == "review-requeued" and line["user"] == "alice" and line["id"] == item


def test_release_of_a_cleaned_copy(site: Site, reviewer: TestClient) -> None:
    item = site.plant()
    folder = site.spool.quarantine / "text-remains"
    clean = (folder / f"{item}.clean.dcm").read_bytes()
    note = "the corner says " + PHI["name"]  # what a reviewer might write
    assert _act(reviewer, item, "release", note=note).status_code == 400  # no justification
    response = _act(reviewer, item, "release", justification="not-phi", note=note)
    assert response.status_code == 303, response.text
    assert (site.spool.outgoing / "folder" / f"{item}.dcm").read_bytes() == clean
    assert not list(folder.glob(f"{item}*"))
    assert site.woken
    line = site.audit_lines()[-1]
    assert line["event"] == "released" and line["user"] == "alice"
    assert line["justification"] == "not-phi" and line["note_chars"] == len(note)
    assert line["destinations"] == ["folder"]
    assert leaks(site.audit_path.read_bytes()) == []
    # Only text-remains items with a cleaned copy can be released.
    other = site.plant("pixel-stage-failed", clean=False)
    response = _act(reviewer, other, "release", justification="not-phi")
    assert response.status_code == 409
    no_copy = site.plant(clean=False)
    assert _act(reviewer, no_copy, "release", justification="not-phi").status_code == 409


def test_region_rule_from_the_page(site: Site, reviewer: TestClient) -> None:
    from dicomnode.pixels.policy import load_policy

    item = site.plant()
    before = site.policy.read_text()
    bad = _act(reviewer, item, "region", x0="10", y0="10", x1="9999", y1="20")
    assert bad.status_code == 400 and site.policy.read_text() == before
    page = reviewer.get(f"/quarantine/{item}/frame/original/0").text
    assert 'id="region-form"' in page and 'id="frame-overlay"' in page
    response = _act(reviewer, item, "region", x0="40", y0="30", x1="50", y1="40")
    assert response.status_code == 303, response.text
    text = site.policy.read_text()
    assert text.startswith("# the site's pixel policy\n")  # the rest of the file is kept
    rules = yaml.safe_load(text)["regions"]
    assert len(rules) == 1 and rules[0]["boxes"] == [[40, 30, 50, 40]]
    header = {
        "Manufacturer": "ACME",
        "ManufacturerModelName": "Scanmaster 3000",
        "Rows": ROWS,
        "Columns": COLUMNS,
        "Modality": "CT",
    }
    policy = load_policy(site.policy)
    last = policy.decide(header).regions[-1]
    assert (last.x0, last.y0, last.x1, last.y1) == (40, 30, 50, 40)
    assert not policy.decide({**header, "Rows": 512}).regions
    assert site.reloads and site.submitted[-1] == item
    assert (site.spool.incoming / f"{item}.dcm").is_file()
    events = [r["event"] for r in site.audit_lines()[-2:]]
    assert events == ["review-region-added", "review-requeued"]
    # A second rule goes under the first.
    second = site.plant()
    assert _act(reviewer, second, "region", x0="0", y0="0", x1="8", y1="8").status_code == 303
    assert len(yaml.safe_load(site.policy.read_text())["regions"]) == 2


def test_region_rule_with_the_bundled_policy_goes_to_the_site_regions_file(
    tmp_path: Path,
) -> None:
    """make run's case: no site policy. The bundled rules/ are never written; the rule goes
    to pixels.site_regions (created on first use) and the pixel stage reads it from there."""
    from dicomnode.pixels.policy import load_policy
    from dicomnode.pixels.stage import PixelStage
    from dicomnode.scrub.profile import rules_dir

    bundled = (rules_dir() / "pixels.yaml").read_bytes()
    site = _make_site(tmp_path, site_policy=False)
    try:
        regions = site.config.pixels.site_regions
        assert not regions.exists()
        client = _login(site, "alice")
        item = site.plant()
        response = _act(client, item, "region", x0="40", y0="30", x1="50", y1="40")
        assert response.status_code == 303, response.text
        assert (rules_dir() / "pixels.yaml").read_bytes() == bundled
        text = regions.read_text()
        assert text.startswith("# Device regions added from the review page")
        assert [r["boxes"] for r in yaml.safe_load(text)["regions"]] == [[[40, 30, 50, 40]]]
        header = {
            "Manufacturer": "ACME",
            "ManufacturerModelName": "Scanmaster 3000",
            "Rows": ROWS,
            "Columns": COLUMNS,
            "Modality": "CT",
        }
        boxes = load_policy(None, regions).decide(header).regions
        assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes][-1] == (40, 30, 50, 40)
        assert not load_policy(None).decide(header).regions  # only through the site's file
        stage = PixelStage(site.config.pixels)
        assert [(b.x0, b.y0, b.x1, b.y1) for b in stage.policy.decide(header).regions] == [
            (40, 30, 50, 40)
        ]
        assert site.submitted[-1] == item and site.reloads
        # A broken site regions file stops the policy with its line, as the policy would.
        regions.write_text("regions:\n  - {boxes: [[1, 2]]}\n")
        with pytest.raises(Exception, match=r"site-regions\.yaml"):
            load_policy(None, regions)
    finally:
        site.app.close()


def test_delete(site: Site, reviewer: TestClient) -> None:
    item = site.plant()
    response = _act(reviewer, item, "delete")
    assert response.status_code == 303
    assert not list((site.spool.quarantine / "text-remains").glob(f"{item}*"))
    line = site.audit_lines()[-1]
    assert (line["event"], line["user"], line["id"]) == ("review-deleted", "alice", item)
    assert reviewer.get(f"/quarantine/{item}").status_code == 404


def test_dead_letter_requeue(site: Site, reviewer: TestClient) -> None:
    item = site.dead_letter()
    csrf = _csrf(reviewer, f"/dead-letter/folder/{item}")
    response = reviewer.post(
        f"/dead-letter/folder/{item}/requeue", data={"csrf": csrf, "confirm": "yes"}
    )
    assert response.status_code == 303
    assert (site.spool.outgoing / "folder" / f"{item}.dcm").is_file()
    line = site.audit_lines()[-1]
    assert (line["event"], line["user"]) == ("review-dead-letter-requeued", "alice")


# -- no PHI in URLs or the log ---------------------------------------------------------------


def test_no_phi_in_any_url_or_the_log(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    item = site.plant(frames=2)
    urls: list[str] = []
    for user in ("alice", "victor"):
        client = _login(site, user)
        for path in (
            "/",
            "/quarantine",
            f"/quarantine/{item}",
            f"/quarantine/{item}/frame/clean/1",
        ):
            response = client.get(path)
            urls.append(path)
            urls += re.findall(r'(?:href|src|action)="([^"]+)"', response.text)
        for url in set(urls):
            if url.startswith("/") and not url.startswith("/static"):
                client.get(url)
    assert urls
    text = "\n".join(urls)
    assert leaks(text.encode()) == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert leaks(logged.encode()) == [], logged[-2000:]
    assert leaks(site.audit_path.read_bytes()) == []


# -- users, sessions ---------------------------------------------------------------------------


def test_a_removed_user_is_logged_out(site: Site) -> None:
    store = UserStore(site.config.review.users_file)
    store.add("temp", Role.VIEWER, "temporary-password-1")
    PASSWORDS["temp"] = "temporary-password-1"
    client = _login(site, "temp")
    assert client.get("/").status_code == 200
    assert store.remove("temp")
    assert client.get("/").status_code == 303


def test_user_commands(tmp_path: Path) -> None:
    config = tmp_path / "dicomnode.yaml"
    users = tmp_path / "review" / "users.json"
    audit = tmp_path / "audit.jsonl"
    config.write_text(
        yaml.safe_dump(
            {"review": {"users_file": "review/users.json"}, "logging": {"audit_file": str(audit)}}
        )
    )
    added = dicomnode("user", "add", "bob", "--role", "viewer", "--config", str(config))
    assert added.returncode == 0, added.stderr
    password = added.stdout.strip().rsplit(" ", 1)[-1]
    assert len(password) >= 16 and password in added.stdout
    assert users.stat().st_mode & 0o777 == 0o600
    assert password not in users.read_text()
    assert UserStore(users).verify("bob", password) is not None
    assert (
        dicomnode("user", "add", "bob", "--role", "viewer", "--config", str(config)).returncode == 2
    )
    listed = dicomnode("user", "list", "--config", str(config))
    assert "bob" in listed.stdout and "viewer" in listed.stdout and password not in listed.stdout
    assert dicomnode("user", "remove", "bob", "--config", str(config)).returncode == 0
    assert dicomnode("user", "remove", "bob", "--config", str(config)).returncode == 1
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert events == ["review-user-added", "review-user-removed"]
    bad = dicomnode("user", "add", "../x", "--role", "viewer", "--config", str(config))
    assert bad.returncode == 2 and "not a user name" in bad.stderr


# -- the node serves it --------------------------------------------------------------------------


def _node_config(tmp_path: Path, port: int) -> Config:
    return Config.model_validate(
        {
            "node": {"port": 0, "disk_floor_mb": 1},
            "spool": {"path": str(tmp_path / "spool")},
            "pipeline": {"workers": 1},
            "pixels": {"enabled": False},
            "metrics": {"enabled": False},
            "logging": {"audit_file": str(tmp_path / "audit.jsonl")},
            "destinations": [{"name": "folder", "type": "folder", "path": str(tmp_path / "out")}],
            "review": {"port": port, "users_file": str(tmp_path / "users.json")},
        }
    )


def test_a_parametric_maps_float_values_are_shown(tmp_path: Path) -> None:
    """A quarantined parametric map (Float Pixel Data, which the pixel stage now checks) is
    shown to the reviewer as a grey frame, NaN ("no value") as black, with its masks."""
    from dicomnode.review.inspect import frames

    ds = _instance()
    del ds.PixelData, ds.WindowCenter, ds.WindowWidth
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"
    ds.BitsAllocated = 32
    values = np.linspace(0.0, 2.0, ROWS * COLUMNS, dtype="<f4").reshape(ROWS, COLUMNS)
    values[:4, :] = np.nan
    ds.FloatPixelData = values.tobytes()
    path = tmp_path / "map.dcm"
    path.write_bytes(encode_instance(ds))
    shown = frames(str(path), 256, {0: [(0, 40, COLUMNS, ROWS)]}, None, Config())
    assert (shown["frames"], shown["rows"], shown["columns"]) == (1, ROWS, COLUMNS)
    picture = np.asarray(Image.open(io.BytesIO(shown["pngs"][0])).convert("L"))
    assert picture.shape == (ROWS, COLUMNS)
    assert picture[:4].max() == 0 and picture[4:40].max() > 100  # NaN black, values shown
    assert picture[40:].max() == 0  # the mask


def test_the_node_serves_the_page_and_a_taken_port_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    from dicomnode.node import Node

    caplog.set_level(logging.INFO)
    port = free_port()
    node = Node(_node_config(tmp_path / "a", port), SECRET, demo=True)
    node.start()
    try:
        assert node.review_port == port
        response = httpx.get(f"http://127.0.0.1:{port}/login", timeout=10)
        assert response.status_code == 200 and response.headers["x-frame-options"] == "DENY"
        demo = [r.getMessage() for r in caplog.records if "review page user" in r.getMessage()]
        assert len(demo) == 1
        password = demo[0].split("password ")[1].split(" ")[0]
        users = tmp_path / "a" / "users.json"
        assert users.stat().st_mode & 0o777 == 0o600
        assert UserStore(users).verify("reviewer", password) is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            token = CSRF.search(client.get("/login").text)
            assert token
            login = client.post(
                "/login", data={"user": "reviewer", "password": password, "csrf": token.group(1)}
            )
            assert login.status_code == 303
            overview = client.get("/")
            assert 'data-destination="folder" data-answering="yes"' in overview.text
        # Another node on the same port: one line naming the setting and the flag.
        taken = Node(_node_config(tmp_path / "b", port), SECRET)
        with pytest.raises(StartupError) as refused:
            taken.start()
        message = str(refused.value)
        assert "review.port, --review-port" in message and "in use" in message
        assert f"127.0.0.1:{port}" in message and "\n" not in message
    finally:
        node.stop(10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
