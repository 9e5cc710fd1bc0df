"""`ntt-batch review`: the paged review page, its orderings and files, and review work in a real
headless Chromium.

Shards are built from coco_mini's ground truth (no models) with random scores, so every ordering
can be recomputed here by brute force. The browser tests drive Chromium over the DevTools
protocol (``tests/browser.py``) with real key presses and mouse clicks (``Input.dispatch*``):
paging through every row, switching orderings, filtering and the full view, keyboard review
(accept, reject, relabel, undo), the downloaded ``decisions.json`` checked against
docs/review_decisions.md, localStorage across a reload, and ``--serve`` saving the decisions.
Screenshots are written under the test's tmp dir (and to ``$NTT_REVIEW_SCREENSHOTS`` when set:
``docs/img/review-*.png`` come from there).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, find_chromium
from click.testing import CliRunner
from test_merge_eval_viz import _row, gt_rows, write_shards

from ntt_batch.cli import main
from ntt_batch.exports.score_filter import ScoreThresholds
from ntt_batch.viz.review import PAGE_CALLBACK, write_review
from ntt_batch.viz.review_decisions import validate_decisions
from ntt_batch.viz.review_select import sample_key

N_IMAGES = 8
RUN_ID = "20250101T000000Z-abcdef01"


@pytest.fixture(scope="module")
def review_rows(coco_mini) -> list[dict]:
    gt = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    rnd = random.Random(3)
    rows = gt_rows(gt, str(coco_mini / "val2017"), score=lambda a: round(rnd.uniform(0.05, 0.99), 3))[:N_IMAGES]
    err = _row(
        424242,
        str(coco_mini / "val2017" / "missing.jpg"),
        None,
        None,
        [],
        status="error",
        error="FileNotFoundError: missing.jpg",
    )
    rows.insert(5, err)  # an error row in the middle of the file order
    return rows


@pytest.fixture(scope="module")
def review_shards(tmp_path_factory, coco_mini, review_rows) -> Path:
    gt = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    cats = [{"id": c["id"], "name": c["name"]} for c in gt["categories"]]
    return write_shards(
        tmp_path_factory.mktemp("review") / "out",
        review_rows,
        per_file=4,
        run_json={
            "memory_bank": {"categories": cats, "content_hash": "bank-hash"},
            "attempts": [{"run_id": RUN_ID}],
            "summary": {"rows": len(review_rows), "ok": N_IMAGES, "empty": 0, "error": 1, "instances": 0},
        },
    )


def _pages(folder: Path, ordering: str) -> list[dict]:
    """Every entry of an ordering, page after page (the page files are JSONP scripts)."""
    out = []
    files = sorted((folder / "data" / ordering).glob("page-*.js"))
    for n, f in enumerate(files):
        text = f.read_text()
        assert text.startswith(PAGE_CALLBACK + "(") and text.endswith(");\n")
        page = json.loads(text[len(PAGE_CALLBACK) + 1 : -3])
        assert page["ordering"] == ordering and page["page"] == n and f.name == f"page-{n:05d}.js"
        out.extend(page["images"])
    return out


def _kept(row: dict, th: ScoreThresholds) -> list[dict]:
    return [p for p in row["instances"] if th.keep(p["category_id"], p["category_name"], p["score"])]


def _f32(x: float) -> float:
    return float(np.float32(x))


def test_review_pages_and_orderings(review_shards, review_rows, tmp_path):
    thresholds = tmp_path / "th.yaml"
    thresholds.write_text("default: 0.2\nperson: 0.5\n")
    th = ScoreThresholds.load(str(thresholds))
    args = ["review", "--shards", str(review_shards), "--out", str(tmp_path / "rv"), "--thresholds", str(thresholds)]
    res = CliRunner().invoke(main, [*args, "--page-size", "3", "--limit", "4", "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert f"{len(review_rows)} rows, {N_IMAGES} images drawn" in res.output and "1 error rows" in res.output
    rv = tmp_path / "rv"
    index = json.loads((rv / "data" / "index.json").read_text())
    assert index["format"] == "ntt-batch/review-index" and index["rows"] == len(review_rows)
    assert index["status"] == {"ok": N_IMAGES, "empty": 0, "error": 1}
    assert index["output"] == str(review_shards.resolve()) and index["run_id"] == RUN_ID
    assert index["memory_bank_hash"] == "bank-hash" and index["page_size"] == 3 and index["seed"] == 7
    orderings = {o["key"]: o for o in index["orderings"]}
    assert orderings["file"] == {"key": "file", "label": "file order", "images": 9, "pages": 3}
    assert json.loads((rv / "index.html").read_text().split('id="review-data">')[1].split("</script>")[0]) == index

    # file order: every row, in order, the error row with its cause; file names; instance indices
    entries = _pages(rv, "file")
    assert [e["uri"] for e in entries] == [r["image_uri"] for r in review_rows]
    assert [e["r"] for e in entries] == list(range(len(review_rows)))
    for e, row in zip(entries, review_rows):
        assert e["name"] == Path(row["image_uri"]).name
        if row["status"] == "error":
            assert e["error"] == "FileNotFoundError: missing.jpg" and "t" not in e
            continue
        for tag in ("t", "f"):
            assert (rv / e[tag]["src"]).is_file() and (rv / e[tag]["masks"]).is_file()
        assert (rv / e["href"]).resolve() == Path(row["image_uri"]).resolve()  # link to the original, relative
        assert [p["s"] for p in e["inst"]] == sorted((p["s"] for p in e["inst"]), reverse=True)
        for p in e["inst"]:  # "k" is the index in the shard row's instances list
            orig = row["instances"][p["k"]]
            assert (p["c"], p["b"], _f32(p["s"])) == (orig["category_id"], orig["bbox"], _f32(orig["score"]))
            assert len(p["m"]) == 6 and len(p["fm"]) == 6  # x, y, w, h on the image + x, y in the sprite
        assert sorted(p["k"] for p in e["inst"]) == list(range(len(row["instances"])))
    by_uri = {r["image_uri"]: r for r in review_rows}
    ok_rows = [r for r in review_rows if r["status"] != "error"]

    # seeded random sample: the 4 smallest keys of the seed and the URI, in key order
    sample = [e["uri"] for e in _pages(rv, "sample")]
    assert sample == sorted((r["image_uri"] for r in ok_rows), key=lambda u: sample_key(7, u))[:4]
    # lowest confidence first: the lowest kept score per image, ascending, 4 of them, over 2 pages
    low = _pages(rv, "low")
    conf = {r["image_uri"]: min(p["score"] for p in _kept(r, th)) for r in ok_rows if _kept(r, th)}
    assert [e["uri"] for e in low] == sorted(conf, key=lambda u: conf[u])[:4] and orderings["low"]["pages"] == 2
    assert [e["conf"] for e in low] == sorted(e["conf"] for e in low)
    assert all(e["conf"] == pytest.approx(conf[e["uri"]]) for e in low)
    # per class: the seeded sample among the rows with a kept instance of the class
    for c in index["categories"]:
        with_c = [r["image_uri"] for r in ok_rows if any(p["category_id"] == c["id"] for p in _kept(r, th))]
        key = f"class-{c['id']}"
        if not with_c:
            assert key not in orderings
            continue
        got = [e["uri"] for e in _pages(rv, key)]
        assert got == sorted(with_c, key=lambda u: sample_key(7, u))[:4], key
        assert c["images"] == len(with_c) and c["kept"] == sum(
            1 for u in with_c for p in _kept(by_uri[u], th) if p["category_id"] == c["id"]
        )

    # bounded file order: only the rows some ordering holds are drawn; a rebuild replaces the old files
    s = write_review(str(review_shards), str(rv), page_size=2, limit=1, max_rows=2, seed=7, thresholds=0.97)
    held = {e["r"] for k in s.orderings for e in _pages(rv, k) if "error" not in e}
    assert s.more_rows and s.orderings["file"] == 2 and s.orderings["sample"] == 1
    assert {int(f.name[:9]) for f in (rv / "img").rglob("*-t.jpg")} == held and s.images == len(held) < N_IMAGES
    assert not (rv / "data" / "file" / "page-00002.js").exists()  # the earlier build's pages are gone

    with pytest.raises(ValueError, match="shards folder"):
        write_review(str(tmp_path / "x.json"), str(tmp_path / "bad"))
    (tmp_path / "mine" / "data").mkdir(parents=True)
    (tmp_path / "mine" / "data" / "keep.txt").write_text("not ours")
    with pytest.raises(ValueError, match="not written by `ntt-batch review`"):
        write_review(str(review_shards), str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "data" / "keep.txt").is_file()
    res = CliRunner().invoke(main, ["review", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--shards is required" in res.output


def test_review_many_rows_bounded(tmp_path, review_rows):
    """400 rows (images absent: listed, not drawn): every row paged, the sampled orderings hold K,
    equal to brute force, and an image with many instances keeps the top ``max_instances``."""
    base = [r for r in review_rows if r["instances"]]
    rnd = random.Random(5)
    rows = []
    for n in range(400):
        src = base[n % len(base)]
        insts = [dict(p, score=round(rnd.uniform(0.01, 0.99), 4)) for p in src["instances"]]
        rows.append(_row(10_000 + n, f"/nowhere/img-{n:04d}.jpg", src["width"], src["height"], insts))
    shards = write_shards(tmp_path / "out", rows, per_file=64, row_group=16)
    s = write_review(str(shards), str(tmp_path / "rv"), page_size=50, limit=10, seed=3, max_instances=3)
    assert s.rows_read == 400 and s.images == 0 and len(s.skipped) == 400
    entries = _pages(tmp_path / "rv", "file")
    assert [e["uri"] for e in entries] == [r["image_uri"] for r in rows] and s.orderings["file"] == 400
    assert all("not found" in e["problem"] for e in entries)
    top3 = {r["image_uri"]: sorted(r["instances"], key=lambda p: -p["score"])[:3] for r in rows}
    for e in entries[:20]:
        assert [_f32(p["s"]) for p in e["inst"]] == [_f32(p["score"]) for p in top3[e["uri"]]]
    sample = [e["uri"] for e in _pages(tmp_path / "rv", "sample")]
    assert sample == sorted(top3, key=lambda u: sample_key(3, u))[:10]
    conf = {u: min(p["score"] for p in ps) for u, ps in top3.items()}
    assert [e["uri"] for e in _pages(tmp_path / "rv", "low")] == sorted(conf, key=lambda u: (conf[u], u))[:10]
    assert all(
        o["images"] <= 10 for o in json.loads((tmp_path / "rv" / "data" / "index.json").read_text())["orderings"][1:]
    )


# ----------------------------------------------------------------------------- in the browser


def _require_chromium() -> str:
    path = find_chromium()
    if path:
        return path
    how = "install it with `bash scripts/install.sh --test` (apt-get install chromium)"
    if os.environ.get("CI") or os.environ.get("NTT_REQUIRE_BROWSER"):
        pytest.fail(f"Chromium not found: {how}")
    pytest.skip(f"Chromium not found and it could not be installed here: {how}")


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"review-{name}.png"
    page.screenshot(str(path))
    keep = os.environ.get("NTT_REVIEW_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


TILES = "Array.from(document.querySelectorAll('.tile:not([hidden])'))"
STATE = "window.__review.state"


def _loaded(page, order: str, number: int) -> None:
    page.wait_for(f"!{STATE}.loading && {STATE}.order === {order!r} && {STATE}.page === {number}")


def _visible_insts(entry: dict, cls: int | None, score: float, person_threshold: float) -> list[dict]:
    """The page's rule: score >= slider, person >= its threshold, the class filter."""
    return [
        p
        for p in entry["inst"]
        if p["s"] >= score and (p["c"] != 1 or p["s"] >= person_threshold) and (cls is None or p["c"] == cls)
    ]


def test_review_work_in_headless_chromium(review_shards, review_rows, tmp_path):
    _require_chromium()
    rv = tmp_path / "rv"
    title = "ntt-batch review: coco_mini (ground-truth masks, random scores)"
    write_review(str(review_shards), str(rv), thresholds={"person": 0.6}, page_size=3, limit=4, seed=1, title=title)
    file_entries = _pages(rv, "file")
    uris = [r["image_uri"] for r in review_rows]
    with Browser(width=1400, height=1000) as b:
        b.allow_downloads(str(tmp_path / "downloads"))
        page = b.open(rv.joinpath("index.html").resolve().as_uri())
        page.wait_for("document.body.dataset.ready === '1'")
        page.settle()
        assert page.errors == [], page.errors
        assert page.eval("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        _shot(page, tmp_path, "grid")

        # every row, page by page: "]" and the next-page button; file names with the URI as title
        seen = []
        for n in range(3):
            _loaded(page, "file", n)
            seen += page.eval(f"{TILES}.map(t => t.dataset.uri)")
            names = page.eval(
                f"{TILES}.map(t => [t.querySelector('.name').textContent, t.querySelector('.name').title])"
            )
            assert names == [[Path(u).name, u] for u in seen[-len(names) :]]
            if n == 0:
                page.press("]")
            elif n == 1:
                page.click("#next-page")
        assert seen == uris
        assert "missing.jpg" in page.eval("document.getElementById('problems').textContent")
        page.press("[")
        _loaded(page, "file", 1)

        # lowest confidence first, walked with "j" across the page boundary: ascending
        page.click('#orders button[data-o="low"]')
        _loaded(page, "low", 0)
        confs = []
        for _ in range(4):
            confs.append(float(page.eval("document.querySelector('.tile.current').dataset.conf")))
            page.press("j")
            page.wait_for(f"!{STATE}.loading")
        assert page.eval(f"{STATE}.page") == 1 and confs == sorted(confs) and len(set(confs)) == 4
        page.press("k")  # back across the boundary: the last image of page 1
        _loaded(page, "low", 0)
        assert float(page.eval("document.querySelector('.tile.current').dataset.conf")) == confs[2]

        # class filter (a click on its row of the counts table) + "per class" + the full view
        page.click('#counts tr[data-c="1"]')
        page.click('#orders button[data-o="class"]')
        _loaded(page, "class", 0)
        cls_entries = _pages(rv, "class-1")
        assert page.eval(f"{TILES}.map(t => t.dataset.uri)") == [e["uri"] for e in cls_entries[:3]]
        page.click("#score", at=(0.3, 0.5))  # a real click on the slider: some value near 0.3
        score = float(page.eval("document.getElementById('score').value"))
        assert 0.15 < score < 0.45
        page.press("f")
        page.wait_for("!document.getElementById('full').hidden")
        page.settle()
        first = cls_entries[0]
        want = _visible_insts(first, 1, score, 0.6)
        full = page.eval("Array.from(document.querySelectorAll('#full .inst')).map(g => [g.dataset.c, g.dataset.k])")
        assert full == [["1", str(p["k"])] for p in want] and want
        assert page.eval("document.querySelectorAll('#full .mask').length") == len(want)
        assert page.eval("document.getElementById('full-name').title") == first["uri"]
        _shot(page, tmp_path, "full")
        page.press("Escape")
        page.click("#score")
        page.press("Home")  # the focused slider takes the key: back to 0
        assert page.eval("document.getElementById('score').value") == "0"

        # keyboard review on the first image of file order, every class shown
        page.click('#counts tr[data-c="1"]')  # again: the filter is off
        page.click('#orders button[data-o="file"]')
        _loaded(page, "file", 0)
        e0 = file_entries[0]
        vis = _visible_insts(e0, None, 0, 0.6)
        page.press("a")  # accept vis[0]
        page.press("r")  # reject vis[1]
        page.press("c")
        page.wait_for("!document.getElementById('picker').hidden")
        page.press("2")  # relabel vis[2] to the picker's 2nd class
        page.press("u")  # undo that
        page.press("c")
        page.type("dog")
        page.press("Enter")  # relabel vis[2] to dog, by name
        page.press("Tab")
        page.press("p")  # Tab then p: back on vis[3]
        page.press("r")  # reject vis[3]
        got = {d["instance"]: (d["action"], d["category_id"]) for d in page.eval("window.__review.decisions()")}
        assert got == {
            vis[0]["k"]: ("accept", vis[0]["c"]),
            vis[1]["k"]: ("reject", vis[1]["c"]),
            vis[2]["k"]: ("relabel", 18),
            vis[3]["k"]: ("reject", vis[3]["c"]),
        }, got
        tile0 = f"document.querySelector('.tile[data-r=\"{e0['r']}\"]')"
        marks = page.eval(f"['acc', 'rej', 'rel'].map(c => {tile0}.querySelectorAll('.inst.' + c).length)")
        assert marks == [1, 2, 1]
        assert "relabelled" in page.eval("document.getElementById('decision-count').textContent")
        page.click("#reviewer")
        page.type("ana")
        page.press("j")  # in the text field: typed, not a key command
        assert page.eval("document.getElementById('reviewer').value") == "anaj"
        page.press("Backspace")
        page.click(f'.tile[data-r="{file_entries[1]["r"]}"]')  # select the 2nd image by a click
        page.press("A")  # accept all its shown instances
        n1 = len(_visible_insts(file_entries[1], None, 0, 0.6))
        assert len(page.eval("window.__review.decisions()")) == 4 + n1
        _shot(page, tmp_path, "decisions")

        # download: a real file, in the documented format
        page.click("#download")
        target = tmp_path / "downloads" / "decisions.json"
        b.wait_event("Browser.downloadProgress", timeout=20)
        _wait_file(target)
        doc = validate_decisions(json.loads(target.read_text()))
        assert doc == json.loads(page.eval("window.__lastDecisions"))
        _check_documented(doc, review_shards, review_rows, expected=4 + n1, reviewer="ana")

        # a reload keeps the decisions (localStorage), the marks and the ordering
        before = page.eval("window.__review.decisions()")
        page.reload()
        page.wait_for("document.body.dataset.ready === '1'")
        assert page.eval("window.__review.decisions()") == before
        assert page.eval(f"['acc', 'rej', 'rel'].map(c => {tile0}.querySelectorAll('.inst.' + c).length)") == marks
        assert page.eval("document.getElementById('reviewer').value") == "ana"
        page.press("?")
        assert page.eval("!document.getElementById('help').hidden")
        page.press("Escape")
        assert page.eval("document.getElementById('help').hidden")
        page.settle(0.2)
        assert page.errors == [], page.errors


def _wait_file(path: Path, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{path} was not downloaded"
        time.sleep(0.05)


def _check_documented(doc: dict, shards: Path, rows: list[dict], expected: int, reviewer: str) -> None:
    """docs/review_decisions.md, field by field."""
    assert doc["format"] == "ntt-batch/review-decisions" and doc["version"] == 1
    assert doc["output"] == str(shards.resolve()) and doc["run_id"] == RUN_ID and doc["run_ids"] == [RUN_ID]
    assert doc["memory_bank_hash"] == "bank-hash" and doc["reviewer"] == reviewer
    assert set(doc["review"]) == {"created_at", "thresholds", "seed", "limit"} and doc["review"]["seed"] == 1
    assert {"id": 18, "name": "dog"} in doc["categories"]
    assert len(doc["decisions"]) == expected
    keys = [(d["image_uri"], d["instance"]) for d in doc["decisions"]]
    assert keys == sorted(keys)
    by_uri = {r["image_uri"]: r for r in rows}
    names = {c["id"]: c["name"] for c in doc["categories"]}
    for d in doc["decisions"]:
        row = by_uri[d["image_uri"]]
        inst = row["instances"][d["instance"]]  # the index in the shard row's instances
        assert d["image_id"] == row["image_id"]
        o = d["original"]
        assert (o["category_id"], o["category_name"], o["bbox"]) == (
            inst["category_id"],
            inst["category_name"],
            inst["bbox"],
        )
        assert np.float32(o["score"]) == np.float32(inst["score"])
        assert d["category_name"] == names[d["category_id"]]
        assert d["decided_at"].endswith("Z") and len(d["decided_at"]) == 20
        assert d["reviewer"] in (None, reviewer)


def test_review_serve_saves_decisions(review_shards, tmp_path):
    _require_chromium()
    from ntt_batch.viz.review_server import make_server

    rv = tmp_path / "rv"
    write_review(str(review_shards), str(rv), page_size=4, limit=2)
    server = make_server(str(rv), port=0)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.server_address[0] == "127.0.0.1"
        with Browser() as b:
            page = b.open(f"http://127.0.0.1:{port}/index.html")
            page.wait_for("document.body.dataset.ready === '1'")
            page.press("a")
            page.press("a")
            page.wait_for("document.body.dataset.saved === '2'")
            assert "saved to decisions.json" in page.eval("document.getElementById('save-status').textContent")
            assert page.errors == [], page.errors
        doc = validate_decisions(json.loads((rv / "decisions.json").read_text()))
        assert [d["action"] for d in doc["decisions"]] == ["accept", "accept"]

        def post(body: bytes, origin: str | None = None) -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/decisions", data=body, method="POST")
            req.add_header("Content-Type", "application/json")
            if origin:
                req.add_header("Origin", origin)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        good = json.dumps(dict(doc, decisions=[])).encode()
        assert post(good, origin="http://evil.example") == 403
        assert post(b'{"format": "something else"}') == 400
        assert post(json.dumps(dict(doc, version=2)).encode()) == 400
        assert len(json.loads((rv / "decisions.json").read_text())["decisions"]) == 2  # refused ones changed nothing
        assert post(good, origin=f"http://127.0.0.1:{port}") == 200
        assert json.loads((rv / "decisions.json").read_text())["decisions"] == []
    finally:
        server.shutdown()
        server.server_close()
