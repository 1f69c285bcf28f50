"""`colorize-batch review` (issue 25): the live review server over a real run with the shipped weights.

HTTP-level tests drive the Starlette app in-process (TestClient); the last test drives a real
`colorize-batch review` subprocess with headless Chromium through the whole loop and prints the
re-colorize round trip of a 3000x2000 scan.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CHROMIUM, REPO, grey_image, launch_chromium, save
from PIL import Image
from starlette.testclient import TestClient

from colorize_batch.cli import main
from colorize_batch.color import rgb_to_lab
from colorize_batch.config import load_config
from colorize_batch.hints import hex_to_ab, parse_hints
from colorize_batch.manifest import Manifest, RunLock, manifest_path, report_path, shard_tag
from colorize_batch.review import MAX_BODY_BYTES, TOKEN_COOKIE, Reviewer, create_app
from colorize_batch.suggestions import distinct_colours
from colorize_batch.safe_files import file_sha256

WEIGHTS = REPO / "weights" / "colorize-effnet-lite0.pt"
TOKEN = "test-token-123"
PLAIN = "roll 1/a.png"
HOSTILE = "<img src=x onerror=alert(1)>.png"  # one file name: HTML specials
ODD = os.fsdecode(b"caf\xe9 \"'&.png")  # not UTF-8, and quotes
HINT = {"x": 0.2, "y": 0.5, "color": "#2040c0", "radius": 0.03}


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def last_run(out: Path) -> dict:
    return json.loads((out / ".colorize-batch" / "last-run.json").read_text(encoding="utf-8"))


@pytest.fixture
def reviewed(tmp_path) -> tuple[Path, Path]:
    """A real run (shipped weights) over three scans, one with HTML specials and one not UTF-8 in its name."""
    src, out = tmp_path / "IN", tmp_path / "OUT"
    for i, rel in enumerate([PLAIN, HOSTILE, ODD]):
        save(src / rel, Image.fromarray(grey_image(480, 320, seed=i)))
    code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q")
    assert code == 0, output
    return src, out


@contextlib.contextmanager
def serving(out: Path) -> Iterator[tuple[TestClient, Reviewer]]:
    """The review app in-process over OUT, holding OUT's lock as the command does."""
    config = load_config(None, {"model.weights": str(WEIGHTS)})
    with RunLock(out):
        reviewer = Reviewer(out, config)
        try:
            with TestClient(create_app(reviewer, TOKEN), base_url="http://127.0.0.1") as client:
                yield client, reviewer
        finally:
            reviewer.close()


@pytest.fixture
def server(reviewed):
    src, out = reviewed
    with serving(out) as (client, reviewer):
        yield client, reviewer, src, out


def post(client: TestClient, path: str, body: object, token: bool = True):
    return client.post(path + (f"?token={TOKEN}" if token else ""), content=json.dumps(body))


def ab_of(jpeg: bytes) -> torch.Tensor:
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return rgb_to_lab(torch.from_numpy(rgb.copy()).permute(2, 0, 1).double() / 255)[1:]


# --------------------------------------------------------------------------- access


def test_every_request_needs_the_token(server):
    client, *_ = server
    client.cookies.clear()
    for path in ("/", "/index.html", "/thumb/0/out", "/full/0/out", "/no-such-page"):
        assert client.get(path).status_code == 403, path
        assert client.get(path + "?token=wrong").status_code == 403, path
    assert post(client, "/api/recolor", {"key": PLAIN, "points": []}, token=False).status_code == 403
    assert post(client, "/api/accept", {"key": PLAIN, "points": []}, token=False).status_code == 403
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and "colour editor" in page.text
    assert client.cookies.get(TOKEN_COOKIE) == TOKEN  # set by the page: the page's own requests need no query
    assert "httponly" in page.headers["set-cookie"].lower() and "samesite=strict" in page.headers["set-cookie"].lower()
    assert page.headers["referrer-policy"] == "no-referrer"
    assert client.get("/thumb/0/out").status_code == 200
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding: only 127.0.0.1/localhost


def test_no_path_from_a_client_is_opened(server):
    client, _, src, out = server
    client.get(f"/?token={TOKEN}")
    for path in ("/thumb/../../manifest.jsonl", "/thumb/%2e%2e/%2e%2e/lock", "/..%2f..%2fetc%2fpasswd",
                 "/full/0/../../../etc/passwd", "/full/999/out", "/thumb/-1/out", "/full/0/manifest",
                 "/.colorize-batch/manifest.jsonl", "/page-99.html", "/IN/roll%201/a.png"):
        assert client.get(path).status_code == 404, path
    for key in ("../IN/roll 1/a.png", "/etc/passwd", str(src / PLAIN), "roll 1/../roll 1/a.png", 7, None):
        for api in ("/api/recolor", "/api/accept"):
            assert post(client, api, {"key": key, "points": []}).status_code == 404, (api, key)
    assert not list(src.parent.glob("*.hints.json")) and not (src.parent / "etc").exists()


def test_hostile_names_are_escaped(server):
    client, *_ = server
    html = client.get(f"/?token={TOKEN}").text
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html
    block = re.search(r'<script type="application/json" id="hint-data">(.*?)</script>', html, re.S)
    assert block and "<" not in block.group(1) and "&" not in block.group(1)
    keys = {image["key"] for image in json.loads(block.group(1))["images"]}
    assert keys == {PLAIN, HOSTILE, ODD}  # exact keys, the name that is not UTF-8 too
    assert post(client, "/api/recolor", {"key": ODD, "points": [HINT]}).status_code == 200


def test_request_bodies_are_bounded_and_checked(server):
    client, *_ = server
    big = {"key": PLAIN, "points": [], "pad": "x" * MAX_BODY_BYTES}
    assert post(client, "/api/recolor", big).status_code == 413
    assert client.post(f"/api/recolor?token={TOKEN}", content=b"{not json").status_code == 400
    deep = client.post(f"/api/recolor?token={TOKEN}", content=b"[" * 30_000 + b"]" * 30_000)  # within the size bound
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    bad = post(client, "/api/recolor", {"key": PLAIN, "points": [{"x": 2, "y": 0.5, "color": "#000000"}]})
    assert bad.status_code == 400 and "x = 2 is outside 0-1" in bad.json()["error"]
    assert post(client, "/api/suggest", {"key": PLAIN, "points": [], "x": "left", "y": 0.5}).status_code == 400


# --------------------------------------------------------------------------- editing


def test_recolor_changes_the_photo_near_the_hint_and_not_far_away(server):
    client, *_ = server
    plain = post(client, "/api/recolor", {"key": PLAIN, "points": []})
    assert plain.status_code == 200 and plain.headers["content-type"] == "image/jpeg"
    hinted = post(client, "/api/recolor", {"key": PLAIN, "points": [HINT]})
    assert Image.open(io.BytesIO(hinted.content)).size == (480, 320)  # display size (this scan is small)
    change = (ab_of(plain.content) - ab_of(hinted.content)).norm(dim=0)
    near = float(change[150:170, 86:106].mean())  # around (0.2, 0.5)
    far = float(change[:, 400:].mean())  # the right sixth
    assert near > 10 and far < 2, (near, far)
    target = torch.tensor(hex_to_ab(HINT["color"]), dtype=torch.float64)
    before, after = (float((ab_of(j)[:, 160, 96] - target).norm()) for j in (plain.content, hinted.content))
    assert after < before - 10  # towards the hint's colour


def test_suggested_colours_are_distinct_and_likely_first(server):
    client, *_ = server
    answer = post(client, "/api/suggest", {"key": PLAIN, "points": [], "x": 0.2, "y": 0.5})
    assert answer.status_code == 200
    colours = answer.json()["colors"]
    assert 2 <= len(colours) <= 6
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c["color"]) for c in colours)
    assert len({c["color"] for c in colours}) == len(colours)
    shares = [c["share"] for c in colours]
    assert shares == sorted(shares, reverse=True) and shares[-1] >= 0.02


def test_distinct_colours_merges_neighbour_bins():
    bins = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [60.0, 60.0], [70.0, 60.0], [-60.0, 40.0]])
    probs = torch.tensor([0.2, 0.15, 0.15, 0.3, 0.19, 0.01])  # 0.5 around grey, 0.49 around (63, 60), 0.01 green
    colours = distinct_colours(probs, bins, 60.0)
    assert [round(c["share"], 2) for c in colours] == [0.5, 0.49]  # neighbours merged, the 1 % colour left out
    grey, warm = colours[0]["color"], colours[1]["color"]
    assert abs(int(grey[1:3], 16) - int(grey[5:7], 16)) < 40 and int(warm[1:3], 16) > int(warm[5:7], 16) + 80


def test_accept_writes_hint_file_output_and_manifest_so_run_finds_it_up_to_date(server, tmp_path):
    client, reviewer, src, out = server
    before = file_sha256(out / PLAIN)
    answer = post(client, "/api/accept", {"key": PLAIN, "points": [HINT]})
    assert answer.status_code == 200, answer.text
    hint_file = src / "roll 1" / "a.hints.json"  # beside the scan, where a run looks
    assert answer.json()["hints"] == str(hint_file)
    assert json.loads(hint_file.read_text(encoding="utf-8")) == {"points": [HINT]}
    assert file_sha256(out / PLAIN) != before
    record = Manifest(out).known[PLAIN]
    assert record.output_sha256 == file_sha256(out / PLAIN) and "+hints:" in (record.source_fp or "")
    assert not [p for p in out.rglob("*") if p.name.endswith(".cb-tmp")]
    page = client.get(f"/?token={TOKEN}").text  # the page shows the accepted points now
    assert '"existing":{"points":[{"x":0.2,"y":0.5,"color":"#2040c0","radius":0.03}]}' in page


def test_run_after_accept_reports_the_photo_up_to_date(reviewed):
    src, out = reviewed
    with serving(out) as (client, _):
        assert post(client, "/api/accept", {"key": PLAIN, "points": [HINT]}).status_code == 200
        code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q")
        assert code == 75, output  # the review holds the lock
        code, output = cli("review", out, "--weights", WEIGHTS)
        assert code == 75 and "holds the lock" in output
    accepted = file_sha256(out / PLAIN)
    code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q")
    assert code == 0, output
    counts = last_run(out)["counts"]
    assert counts["done"] == 0 and counts["skipped_up_to_date"] == 3, counts
    assert counts["with_hints"] == 0  # nothing redone: the accepted output stands
    assert file_sha256(out / PLAIN) == accepted


def test_review_of_a_sharded_run_records_accepts_where_its_shards_read_them(tmp_path):
    """An OUT made by --shard runs has only shard manifests: review serves it, and an accepted photo
    is recorded in the manifest of the shard that owns it, so that shard's next run finds it current."""
    src, out = tmp_path / "IN", tmp_path / "OUT"
    names = [f"p{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        save(src / name, Image.fromarray(grey_image(160, 120, seed=i)))
    shards = [("--shard", f"{i}/2") for i in (0, 1)]
    for shard in shards:
        assert cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q", *shard)[0] == 0
    code, output = cli("gallery", out, "--no-suggest")  # the static gallery of a sharded OUT: every shard's photos
    assert code == 0, output
    page = (out / ".colorize-batch" / "gallery" / "index.html").read_text(encoding="utf-8")
    assert all(name in page for name in names) and str(src) in page  # the source folder from the shards' reports
    with serving(out) as (client, _):
        assert post(client, "/api/accept", {"key": "p0.png", "points": [HINT]}).status_code == 200
    accepted = file_sha256(out / "p0.png")
    assert not manifest_path(out).exists()  # no unsharded manifest: the OUT keeps its one job shape
    done = 0
    for i, shard in enumerate(shards):
        code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q", *shard)
        assert code == 0, output
        done += json.loads(report_path(out, shard_tag(i, 2)).read_text())["counts"]["done"]
    assert done == 0 and file_sha256(out / "p0.png") == accepted  # nothing redone: the accepted output stands


def test_review_of_a_folder_without_a_run(tmp_path):
    code, output = cli("review", tmp_path)
    assert code == 2 and "no finished run here" in output
    assert not (tmp_path / ".colorize-batch").exists()


def test_round_trip_of_a_3000x2000_scan(tmp_path, capsys):
    src, out = tmp_path / "IN", tmp_path / "OUT"
    save(src / "scan.jpg", Image.fromarray(grey_image(3000, 2000, seed=5)), quality=90)
    code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q")
    assert code == 0, output
    config = load_config(None, {"model.weights": str(WEIGHTS)})
    with RunLock(out):
        reviewer = Reviewer(out, config)
        try:
            with TestClient(create_app(reviewer, TOKEN), base_url="http://127.0.0.1") as client:
                times = []
                for i in range(4):  # the first one decodes the scan (once)
                    point = {**HINT, "x": 0.2 + 0.1 * i}
                    start = time.perf_counter()
                    answer = post(client, "/api/recolor", {"key": "scan.jpg", "points": [point]})
                    times.append(time.perf_counter() - start)
                    assert answer.status_code == 200
                assert Image.open(io.BytesIO(answer.content)).size == (1024, 683)
        finally:
            reviewer.close()
    with capsys.disabled():
        print(f"\nreview round trip, 3000x2000 scan, shipped weights (HTTP in-process): first {times[0] * 1000:.0f} ms "
              f"(decodes the scan), then median {statistics.median(times[1:]) * 1000:.0f} ms")


# --------------------------------------------------------------------------- the whole loop in a browser


def _start_review(out: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "colorize_batch", "review", str(out), "--port", "0", "--weights", str(WEIGHTS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server has bound its port (or died)
    if not line:
        proc.wait(10)
        pytest.fail(f"review did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.strip()


def test_browser_loop_on_a_real_review_server(tmp_path, capsys):
    if not CHROMIUM.is_file():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
    src, out = tmp_path / "IN", tmp_path / "OUT"
    save(src / "scans" / "big scan.jpg", Image.fromarray(grey_image(3000, 2000, seed=7)), quality=90)
    save(src / HOSTILE, Image.fromarray(grey_image(240, 160, seed=8)))
    code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q")
    assert code == 0, output
    proc, url = _start_review(out)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{20,}", url), url
        base = url.split("/?")[0]
        # Refusals, from outside the page: no token, a wrong one, ../ paths sent raw.
        for bad in (base + "/", base + "/?token=nope", base + "/thumb/0/out"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bad, timeout=10)
            assert refused.value.code == 403
        token = url.split("token=")[1]
        parts = urlsplit(base)
        for raw in ("/thumb/../../.colorize-batch/manifest.jsonl", "/../../etc/passwd", "/full/0/../../../etc/passwd"):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            conn.request("GET", f"{raw}?token={token}")
            assert conn.getresponse().status == 404, raw
            conn.close()
        round_trips, picked = _browser_loop(sync_api, url, tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        finally:
            proc.kill()
    assert code == 130, proc.stderr.read() if proc.stderr else ""
    assert proc.stdout is not None and proc.stdout.read() == ""  # the address was its one line on stdout
    rel = "scans/big scan.jpg"
    document = json.loads((src / "scans" / "big scan.hints.json").read_text(encoding="utf-8"))
    assert len(parse_hints(document).points) == 1
    point = document["points"][0]  # where it was dragged to, in the suggested colour picked
    assert abs(point["x"] - 0.4) < 0.01 and abs(point["y"] - 0.45) < 0.01 and point["color"] == picked
    code, output = cli("run", src, out, "--weights", WEIGHTS, "--workers", "0", "-q")
    assert code == 0, output
    counts = last_run(out)["counts"]
    assert counts["done"] == 0 and counts["skipped_up_to_date"] == 2, counts
    hint_sha = file_sha256(src / "scans" / "big scan.hints.json")
    assert (Manifest(out).known[rel].source_fp or "").endswith(f"+hints:{hint_sha[:16]}")  # keyed on the file a run reads
    with capsys.disabled():
        print(f"\nreview round trip in Chromium, 3000x2000 scan, shipped weights (click to new image on screen): "
              f"{', '.join(f'{ms} ms' for ms in round_trips)}")


_BOXES = """(img) => {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const box = (fx, fy) => {
    const d = g.getImageData(Math.round(fx * c.width) - 8, Math.round(fy * c.height) - 8, 16, 16).data;
    const m = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) { m[0] += d[i]; m[1] += d[i + 1]; m[2] += d[i + 2]; }
    return m.map(v => v / (d.length / 4));
  };
  return {near: box(0.3, 0.5), far: box(0.93, 0.1), size: [c.width, c.height]};
}"""


def _distance(a: list[float], b: list[float]) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def _browser_loop(sync_api, url: str, tmp_path: Path) -> tuple[list[int], str]:
    """Open the printed address, open the scan, click a point, pick a suggested colour, move the
    point, add and remove another, accept; the click round trips (ms) and the colour picked."""
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        context = launch_chromium(pw, tmp_path)
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: (errors.append("dialog: " + dialog.message), dialog.dismiss()))
            page.goto(url)
            assert page.locator(".card").count() == 2
            assert page.get_by_text(HOSTILE, exact=True).count() == 1  # shown as text, never as a tag
            editor = page.locator("#editor")

            def rendered(count: int) -> None:
                page.wait_for_function(f"document.getElementById('editor').getAttribute('data-renders') === '{count}'",
                                       timeout=60_000)

            page.locator(".card", has_text="big scan.jpg").locator(".hint-area img").click()
            rendered(1)
            image = page.locator("#editor-image")
            before = image.evaluate(_BOXES)
            assert before["size"] == [1024, 683]
            box = image.bounding_box()
            assert box
            image.click(position={"x": 0.3 * box["width"], "y": 0.5 * box["height"]})  # adds a point, the picker's colour
            rendered(2)
            trips = [int(editor.get_attribute("data-round-trip-ms") or -1)]
            page.wait_for_function("document.querySelectorAll('#editor-suggestions .swatch').length > 1", timeout=60_000)
            assert page.locator("#editor-area .hint-dot").count() == 1
            swatches = page.locator("#editor-suggestions .swatch")
            colours = [swatches.nth(i).get_attribute("data-color") or "" for i in range(swatches.count())]
            current = before["near"]
            pick = max(range(len(colours)), key=lambda i: _distance([int(colours[i][k:k + 2], 16) for k in (1, 3, 5)], current))
            swatches.nth(pick).click()
            rendered(3)
            trips.append(int(editor.get_attribute("data-round-trip-ms") or -1))
            after = image.evaluate(_BOXES)
            near, far = _distance(after["near"], before["near"]), _distance(after["far"], before["far"])
            assert near > 8 and far < 3, (near, far, colours[pick])
            # Move the point (drag its dot), add a second one and remove it again.
            page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.45 * box["height"], steps=5)
            page.mouse.up()
            rendered(4)
            image.click(position={"x": 0.7 * box["width"], "y": 0.3 * box["height"]})
            rendered(5)
            assert page.locator("#editor-area .hint-dot").count() == 2
            page.locator("#editor-remove").click()  # the selected point: the new one
            rendered(6)
            assert page.locator("#editor-area .hint-dot").count() == 1
            page.locator("#editor-accept").click()
            page.wait_for_function("document.getElementById('editor').getAttribute('data-accepted') === '1'", timeout=60_000)
            assert "accepted: 1 point(s)" in page.locator("#editor-status").inner_text()
            page.locator("#editor-close").click()
            assert editor.is_hidden()
        finally:
            context.close()
    assert errors == [], errors
    return trips, colours[pick]


def test_weights_without_bins_suggest_their_own_prediction(tmp_path, tiny_weights):
    src, out = tmp_path / "IN", tmp_path / "OUT"
    save(src / "a.png", Image.fromarray(grey_image(96, 64)))
    assert cli("run", src, out, "--weights", tiny_weights, "--size", "64", "--workers", "0", "-q")[0] == 0
    config = load_config(None, {"model.weights": str(tiny_weights), "model.size": 64})
    with RunLock(out):
        reviewer = Reviewer(out, config)
        try:
            assert reviewer.settings_mismatch() is None
            colours = reviewer.suggest("a.png", [], 0.5, 0.5)  # the pix2pix family has no bins
            assert len(colours) == 1 and re.fullmatch(r"#[0-9a-f]{6}", colours[0]["color"])
        finally:
            reviewer.close()
    config = load_config(None, {"model.weights": str(tiny_weights), "model.size": 96})
    with RunLock(out):
        reviewer = Reviewer(out, config)
        try:
            assert "1 of 1 photo(s) were made with other weights or settings" in (reviewer.settings_mismatch() or "")
        finally:
            reviewer.close()


def test_sigterm_exits_130_and_a_taken_port_is_a_usage_error(tmp_path, tiny_weights):
    src, out = tmp_path / "IN", tmp_path / "OUT"
    save(src / "a.png", Image.fromarray(grey_image(96, 64)))
    assert cli("run", src, out, "--weights", tiny_weights, "--size", "64", "--workers", "0", "-q")[0] == 0
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "colorize_batch", "review", str(out), "--weights", str(tiny_weights), "--size", "64"]
    proc = subprocess.Popen(command + ["--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        port = int(urlsplit(proc.stdout.readline().strip()).port or 0)
        assert port > 0
        busy = subprocess.run(command + ["--port", str(port)], capture_output=True, text=True, env=env, timeout=120)
        assert busy.returncode == 75 and "holds the lock" in busy.stderr  # OUT's lock refuses it before the port does
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
    finally:
        proc.kill()
    with socket.socket() as taken:  # another program's port
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = subprocess.run(command + ["--port", str(port)], capture_output=True, text=True, env=env, timeout=120)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr, busy.stderr
    assert busy.stdout == ""
