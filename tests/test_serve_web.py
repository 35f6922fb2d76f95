"""The review site's HTTP rules, against the real app in uvicorn over a stand-in server: the body
cap, authentication before routing, same-origin checks on changes, per-login sessions, review
bodies, and no camera credential in what the site shows."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import uvicorn

from avarnet.apps.serve.config import CameraConfig, ServeConfig, StorageConfig, WebConfig
from avarnet.apps.serve.events import EventStore
from avarnet.apps.serve.web import create_app

COOKIE = "avarnet_session"
MAX_BODY_BYTES = 64 * 1024  # the documented cap

TOKEN = "web-test-token-99"
SECRET = "hunter2secret"
EVENT = "yard-1"


class StandIn:
    """The parts of a running Server the site uses, with an event in a real store."""

    def __init__(self, folder) -> None:
        self.config = ServeConfig(
            cameras=[CameraConfig(name="yard", source=f"rtsp://user:{SECRET}@127.0.0.1:9/x")],
            storage=StorageConfig(path=folder),
            web=WebConfig(token=TOKEN),
        )
        self.store = EventStore(folder / "events.db")
        now = time.time()
        self.store.insert(
            {
                "id": EVENT,
                "camera": "yard",
                "label": "crash",
                "start_time": now - 5,
                "end_time": now,
                "media_start": 0.0,
                "peak_score": 0.9,
                "peak_time": now - 3,
                "score": 0.2,
                "segments": 5,
                "scores": [[now - 5, 0.7], [now - 4, 0.9]],
                "clip": "yard-1.mp4",
                "snapshot": "yard-1.jpg",
            }
        )
        (folder / "clips").mkdir()
        (folder / "clips" / "yard-1.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + bytes(100))
        (folder / "snapshots").mkdir()
        (folder / "snapshots" / "yard-1.jpg").write_bytes(b"\xff\xd8\xff" + bytes(100))
        self.reviews: list[tuple] = []

    def camera_status(self) -> list[dict]:
        error = f"cannot open rtsp://user:{SECRET}@127.0.0.1:9/x: Connection refused"
        return [
            {
                "name": "yard",
                "status": "unhealthy",
                "healthy": False,
                "error": error,
                "label": None,
                "score": None,
                "threshold": 0.5,
                "history": [],
                "event": None,
            }
        ]

    def stats(self) -> dict:
        return {"cameras": self.camera_status(), "mqtt": {"last_error": f"pw {SECRET}"}}

    def threshold(self, camera: str) -> float:
        return 0.5

    def classes(self, camera: str) -> list[str]:
        return ["crash", "normal", "scream"]

    def review(self, event_id: str, state, label) -> dict:
        if self.store.get(event_id) is None:
            raise KeyError(f"no event {event_id}")
        if label and label not in self.classes("yard"):
            raise ValueError(f"unknown class {label!r}")
        self.reviews.append((event_id, state, label))
        return self.store.review(event_id, state, label)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    server = StandIn(tmp_path_factory.mktemp("web"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = uvicorn.Server(
        uvicorn.Config(create_app(server), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert web.started
    yield server, port
    web.should_exit = True
    thread.join(timeout=5)
    server.store.close()


def request(port, method, path, body=b"", headers=None):
    """(status, headers, body) of one request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


def login(port) -> str:
    status, headers, _ = request(
        port,
        "POST",
        "/login",
        f"secret={TOKEN}&next=/".encode(),
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{port}"},
    )
    assert status == 303, status
    cookie = headers["set-cookie"]
    assert "samesite=strict" in cookie.lower() and "httponly" in cookie.lower()
    return cookie.split(";")[0].split("=", 1)[1]


def test_a_large_body_is_refused_before_authentication_and_before_parsing(site):
    _, port = site
    big = MAX_BODY_BYTES + 1
    for path in ("/login", "/api/events/yard-1/review", "/events/yard-1/review", "/nowhere"):
        status, _, body = request(
            port, "POST", path, b"x" * big, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 413, (path, status)
        assert b"larger than" in body
    # a declared length is refused without reading a byte: the server answers at once
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/login")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(300 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"--x\r\n")
    assert conn.getresponse().status == 413
    conn.close()


def test_a_streamed_body_is_cut_off_at_the_cap(site):
    """No Content-Length (chunked): the bytes are counted as they arrive."""
    _, port = site
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):  # 3 x 32 KiB, past the 64 KiB cap
            sock.sendall(b"8000\r\n" + b"y" * 0x8000 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/events"),
        ("GET", "/api/cameras"),
        ("GET", "/api/stats"),
        ("GET", f"/events/{EVENT}/clip.mp4"),
        ("HEAD", f"/events/{EVENT}/clip.mp4"),
        ("GET", f"/events/{EVENT}/snapshot.jpg"),
        ("GET", "/no/such/page"),
        ("HEAD", "/no/such/page"),
        ("PATCH", "/api/events"),
        ("OPTIONS", "/api/events"),
        ("PUT", f"/api/events/{EVENT}/review"),
        ("DELETE", "/"),
        ("POST", f"/api/events/{EVENT}/review"),
        ("POST", f"/events/{EVENT}/review"),
        ("GET", f"/events/{EVENT}/review"),
    ],
)
def test_everything_but_a_page_answers_401_without_the_token(site, method, path):
    _, port = site
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE}=forged"}):
        status, got, body = request(port, method, path, headers=headers)
        assert status == 401, (method, path, headers, status)
        assert b"ftyp" not in body and b"\xff\xd8" not in body


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/", f"/events/{EVENT}", "/events/unknown"])
def test_pages_redirect_to_the_login_form(site, method, path):
    _, port = site
    status, headers, _ = request(port, method, path)
    assert status == 303 and headers["location"].startswith("/login?next=")


def test_with_the_token_unknown_paths_are_404_and_other_methods_405(site):
    _, port = site
    assert request(port, "GET", "/no/such/page", headers=BEARER)[0] == 404
    assert request(port, "PATCH", "/api/events", headers=BEARER)[0] == 405
    assert request(port, "OPTIONS", "/api/events", headers=BEARER)[0] == 405
    assert request(port, "GET", f"/events/{EVENT}/clip.mp4", headers=BEARER)[0] == 200


def test_each_login_is_its_own_session_and_logout_revokes_it(site):
    _, port = site
    first, second = login(port), login(port)
    assert first != second
    origin = {"Origin": f"http://127.0.0.1:{port}"}
    for cookie in (first, second):
        assert (
            request(port, "GET", "/api/events", headers={"Cookie": f"{COOKIE}={cookie}"})[0] == 200
        )
    status, headers, _ = request(
        port, "POST", "/logout", headers={"Cookie": f"{COOKIE}={first}", **origin}
    )
    assert status == 303 and headers["location"] == "/login"
    # the logged-out cookie is dead even if a client keeps sending it; the other login lives on
    assert request(port, "GET", "/api/events", headers={"Cookie": f"{COOKIE}={first}"})[0] == 401
    assert request(port, "GET", "/", headers={"Cookie": f"{COOKIE}={first}"})[0] == 303
    assert request(port, "GET", "/api/events", headers={"Cookie": f"{COOKIE}={second}"})[0] == 200


def test_a_review_from_another_origin_is_refused(site):
    server, port = site
    cookie = {"Cookie": f"{COOKIE}={login(port)}"}
    before = len(server.reviews)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    other = {"Origin": f"http://127.0.0.1:{port + 1}", "Sec-Fetch-Site": "same-site"}
    attacks = [
        ("/events/yard-1/review", b"review=false", {**cookie, **form, **other}),
        ("/events/yard-1/review", b"review=false", {**cookie, **form, "Origin": "null"}),
        ("/events/yard-1/review", b"review=false", {**cookie, **form}),  # no Origin at all
        ("/api/events/yard-1/review", b'{"review": "false"}', {**cookie, **JSON, **other}),
        ("/api/events/yard-1/review", b'{"review": "false"}', {**BEARER, **JSON, **other}),
    ]
    for path, body, headers in attacks:
        status, _, text = request(port, "POST", path, body, headers)
        assert status == 403, (path, headers, status, text)
    assert len(server.reviews) == before
    # the page itself (same origin) may
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    status, headers, _ = request(
        port, "POST", "/events/yard-1/review", b"review=false", {**cookie, **form, **own}
    )
    assert status == 303 and server.reviews[-1] == (EVENT, "false", None)


def test_the_review_api_takes_json_only_and_one_clear_message_for_a_bad_body(site):
    server, port = site
    path = f"/api/events/{EVENT}/review"
    status, _, body = request(
        port, "POST", path, b'{"review": "true"}', {**BEARER, "Content-Type": "text/plain"}
    )
    assert status == 415 and b"application/json" in body
    for raw in (b"[]", b'"x"', b"3", b'{"review": ["true"]}', b'{"colour": "red"}', b"{nope"):
        status, _, body = request(port, "POST", path, raw, {**BEARER, **JSON})
        message = json.loads(body)["error"]
        assert status == 400, raw
        assert "attribute" not in message and "object has no" not in message, message
    assert (
        "JSON object"
        in json.loads(request(port, "POST", path, b"[]", {**BEARER, **JSON})[2])["error"]
    )
    status, _, body = request(
        port, "POST", "/api/events/none/review", b'{"review": "true"}', {**BEARER, **JSON}
    )
    assert status == 404 and json.loads(body) == {"error": "no event none"}
    status, _, body = request(
        port, "POST", path, b'{"review": "true", "label": "crash"}', {**BEARER, **JSON}
    )
    assert status == 200 and json.loads(body)["final_label"] == "crash"


def test_no_camera_credential_on_the_page_or_in_the_api(site):
    _, port = site
    for path in ("/", "/api/cameras", "/api/stats"):
        status, _, body = request(port, "GET", path, headers=BEARER)
        assert status == 200 and SECRET.encode() not in body, path
        assert b"127.0.0.1:9/x" in body or path == "/api/stats"


def test_camera_credentials_appear_nowhere_end_to_end(tmp_path, tiny_backbones):
    """A refused camera whose URL holds a password, next to a file camera, a real broker: the
    password is in none of the log, the page, /api/cameras, /api/stats, the retained state."""
    import serve_support as ss

    broker = ss.Broker(tmp_path / "broker")
    broker.start()
    ckpt = ss.tiny_checkpoint(tiny_backbones, tmp_path / "tiny.ckpt")
    clip = ss.make_clip(tmp_path / "cam.mp4", 3.0)
    port = ss.free_port()
    cfg = ss.write_config(
        tmp_path / "c.yaml",
        ckpt,
        {
            "door": {
                "source": f"rtsp://user:{SECRET}@127.0.0.1:{ss.free_port()}/x",
                "retry_max_s": 1,
            },
            "yard": {"source": str(clip), "loop": True},
        },
        tmp_path / "store",
        port,
        broker.port,
    )
    log = tmp_path / "server.log"
    proc = ss.start_server(cfg, log)
    sub = None
    try:
        ss.wait_up(port, proc, log)

        def refused_twice():
            assert proc.poll() is None, f"server exited {proc.returncode}:\n{log.read_text()}"
            cams = {c["name"]: c for c in ss.api(port, "/api/cameras")[1]}
            door = cams["door"]
            return cams if door["attempts"] >= 2 and door["error"] else None

        cams = ss.wait_for(refused_twice, 60, "two refused connections of the camera", log)
        assert cams["door"]["status"] == "unhealthy"
        sub = ss.Subscriber(broker.port, "late-sub", clean=True)  # gets the retained state only
        sub.wait(lambda: sub.topic("avarnet/door/state"), 20, "the retained state of the camera")
        # The broker hands the retained message over first; a state the server publishes after the
        # subscription arrives live, without the retain flag.
        state = sub.topic("avarnet/door/state")[0]
        assert state[1] and "error" in json.loads(state[0])
        shown = {
            "page": ss.api(port, "/")[1],
            "cameras": ss.api(port, "/api/cameras")[1],
            "stats": ss.api(port, "/api/stats")[1],
            "state": state[0],
            "every message": [p for _, p, _ in sub.messages],
        }
        assert isinstance(shown["page"], bytes) and b"cam-door" in shown["page"]
        for where, what in shown.items():
            text = what.decode() if isinstance(what, bytes) else json.dumps(what)
            assert SECRET not in text, where
    finally:
        if sub is not None:
            sub.close()
        proc.terminate()
        proc.wait(timeout=60)
        broker.stop()
    text = log.read_text()
    assert "door" in text and SECRET not in text
