"""The review page in real headless Chromium: log in, the event with its snapshot, its clip
playing, marked a false alarm; a page on another port of the same host cannot change a review;
logging out ends that session; the database and export-reviewed reflect it (extract takes it)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time

import pytest
import serve_support as ss
from conftest import CHROMIUM, CHROMIUM_ARGS

from avarnet.cli import main


class OtherSite:
    """A page on another port of 127.0.0.1 (same site, another origin) that tries to change a
    review with the visitor's session: a JSON API call sent as text/plain, then a form post."""

    def __init__(self, target: str, event_id: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        html = (
            "<!doctype html><html><body><form id='f' method='post' "
            f"action='{target}/events/{event_id}/review'>"
            "<input name='review' value='true'></form><script>"
            f"fetch('{target}/api/events/{event_id}/review', {{method: 'POST', mode: 'no-cors', "
            "credentials: 'include', headers: {'Content-Type': 'text/plain'}, "
            "body: JSON.stringify({review: 'true'})})"
            ".finally(() => { document.title = 'sent'; document.getElementById('f').submit(); });"
            "</script></body></html>"
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_review_page_login_snapshot_clip_false_alarm_export(tmp_path, tiny_backbones):
    playwright = pytest.importorskip("playwright.sync_api")  # here: collecting stays light
    ckpt = ss.tiny_checkpoint(tiny_backbones, tmp_path / "tiny.ckpt", std=0.02)
    clip = ss.make_clip(tmp_path / "cam.mp4", 3.5, size=(320, 180))
    port = ss.free_port()
    cfg = ss.write_config(
        tmp_path / "c.yaml",
        ckpt,
        {
            "entrance": {
                "source": str(clip),
                "loop": True,
                "realtime": True,
                "alerts": {"threshold": 0.0, "min_segments": 2},
            },
            "garage": {"source": f"rtsp://127.0.0.1:{ss.free_port()}/stream1", "retry_max_s": 2},
        },
        tmp_path / "store",
        port,
    )
    log = tmp_path / "server.log"
    proc = ss.start_server(cfg, log)
    base = f"http://127.0.0.1:{port}"
    try:
        ss.wait_up(port, proc, log)
        with playwright.sync_playwright() as pw:
            # the browser starts and logs in while the camera records its first two events
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(base + "/")
            assert "/login" in page.url  # no token, no page
            page.fill("#secret", "not-the-token")
            page.click("#login")
            assert "wrong token" in page.content()
            page.fill("#secret", ss.TOKEN)
            page.click("#login")

            def two_with_clips():  # one request per poll
                clipped = [e for e in ss.api(port, "/api/events")[1] if e["has_clip"]]
                return [e for e in clipped if e["has_snapshot"]][-2:] if len(clipped) >= 2 else None

            events = ss.wait_for(two_with_clips, 90, "two events with clips", log)
            first, second = sorted(events, key=lambda e: e["start_time"])
            page.reload()  # the table is rendered by the server; the camera cards update live
            page.wait_for_selector(f"tr.event[data-id='{first['id']}']")
            thumb = page.locator(f"tr.event[data-id='{first['id']}'] img.thumb")
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
            )
            assert page.locator("#cam-entrance .badge").inner_text() in ("online", "connecting")
            page.wait_for_selector("#cam-garage .badge.unhealthy")
            page.wait_for_function(
                "document.querySelector('#cam-entrance polyline').getAttribute('points').split(' ').length > 3"
            )
            page.screenshot(path=str(tmp_path / "serve-index.png"), full_page=True)

            page.click(f"tr.event[data-id='{first['id']}'] a >> nth=1")
            page.wait_for_selector("#clip")
            playing = page.evaluate("""async () => {
                const v = document.getElementById('clip');
                if (v.readyState < 2) await new Promise((ok, bad) => {
                    v.addEventListener('loadeddata', ok); v.addEventListener('error', () => bad(v.error));
                    setTimeout(() => bad('timeout'), 15000); });
                await v.play();
                await new Promise(r => setTimeout(r, 1500));
                return {t: v.currentTime, d: v.duration, w: v.videoWidth, err: v.error && v.error.code};
            }""")
            assert playing["err"] is None and playing["w"] == 320
            assert playing["t"] > 0.5 and playing["d"] >= 3.0, playing
            assert page.locator("#curve polyline").count() == 1
            page.screenshot(path=str(tmp_path / "serve-event.png"), full_page=True)
            page.click("#mark-false")
            page.wait_for_selector("#review.review-false")
            assert page.locator("#review").inner_text() == "false alarm"
            page.goto(base + "/?review=false")
            assert page.locator("tr.event").count() == 1
            # a page on another port of this host, visited while logged in, changes nothing
            other = OtherSite(base, first["id"])
            try:
                page.goto(other.url)
                page.wait_for_url(lambda url: url.startswith(f"{base}/events/"), timeout=15000)
            finally:
                other.close()
            time.sleep(0.5)
            assert ss.api(port, f"/api/events/{first['id']}")[1]["review"] == "false"
            assert page.url == f"{base}/events/{first['id']}/review" and "refused" in page.content()
            # logging out ends this session: its cookie no longer opens anything
            page.goto(base + "/")
            session = page.context.cookies()
            page.click("#logout")
            page.wait_for_url("**/login")
            page.context.add_cookies(session)
            page.goto(base + "/")
            assert "/login" in page.url
            browser.close()
        shutil.copy(tmp_path / "serve-index.png", tmp_path / "serve.png")
        target = os.environ.get("AVARNET_SCREENSHOT_DIR")
        if target:  # docs/img when refreshing the README's pictures
            for name in ("serve-index.png", "serve-event.png"):
                shutil.copy(tmp_path / name, os.path.join(target, name))
        # the second event: a true alarm of a corrected class, through the JSON API
        status, body = ss.api(
            port,
            f"/api/events/{second['id']}/review",
            method="POST",
            body={"review": "true", "label": "crash"},
        )
        assert status == 200 and body["final_label"] == "crash" and body["review"] == "true"
        status, body = ss.api(
            port,
            f"/api/events/{second['id']}/review",
            method="POST",
            body={"label": "no-such-class"},
        )
        assert status == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    db = sqlite3.connect(tmp_path / "store" / "events.db")
    review = dict(db.execute("SELECT id, review FROM events").fetchall())
    assert review[first["id"]] == "false" and review[second["id"]] == "true"
    out = tmp_path / "reviewed"
    assert main(["export-reviewed", str(cfg), "--out", str(out)]) == 0
    assert [p.name for p in (out / "normal").iterdir()] == [f"entrance-{first['id']}.mp4"]
    assert [p.name for p in (out / "crash").iterdir()] == [f"entrance-{second['id']}.mp4"]
    vdir, adir = tiny_backbones
    assert (
        main(
            [
                "extract",
                str(out),
                "--out",
                str(tmp_path / "feats"),
                "--video-backbone",
                str(vdir),
                "--audio-backbone",
                str(adir),
            ]
        )
        == 0
    )
