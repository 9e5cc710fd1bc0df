"""`ntt-batch review`: the static HTML page, checked in a real headless Chromium.

Shards are built from coco_mini's ground truth (no models), so the page's numbers are known. The
browser test drives Chromium over the DevTools protocol (``tests/browser.py``): the page must load
without console errors or failed loads, and the class filter, the score slider and the per-class
thresholds switch must change what is shown, as the counts say.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from browser import Browser, find_chromium
from click.testing import CliRunner
from test_merge_eval_viz import _row, gt_rows, write_shards

from ntt_batch.cli import main
from ntt_batch.viz.review import write_review

N_IMAGES = 8


@pytest.fixture(scope="module")
def review_shards(tmp_path_factory, coco_mini) -> Path:
    gt = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    rnd = random.Random(3)
    rows = gt_rows(gt, str(coco_mini / "val2017"), score=lambda a: round(rnd.uniform(0.05, 0.99), 3))[:N_IMAGES]
    rows.append(
        _row(
            424242,
            str(coco_mini / "val2017" / "missing.jpg"),
            None,
            None,
            [],
            status="error",
            error="FileNotFoundError: missing.jpg",
        )
    )
    cats = [{"id": c["id"], "name": c["name"]} for c in gt["categories"]]
    return write_shards(
        tmp_path_factory.mktemp("review") / "out",
        rows,
        per_file=4,
        run_json={
            "memory_bank": {"categories": cats},
            "summary": {"rows": len(rows), "ok": N_IMAGES, "empty": 0, "error": 1, "instances": 0},
        },
    )


def _page_data(index: Path) -> dict:
    text = index.read_text()
    tag = '<script type="application/json" id="review-data">'
    start = text.index(tag) + len(tag)
    return json.loads(text[start : text.index("</script>", start)])


def test_review_page_files(review_shards, tmp_path, coco_mini):
    thresholds = tmp_path / "th.yaml"
    thresholds.write_text("default: 0.2\nperson: 0.5\n")
    res = CliRunner().invoke(
        main,
        [
            "review",
            "--shards",
            str(review_shards),
            "--out",
            str(tmp_path / "rv"),
            "--thresholds",
            str(thresholds),
            "--limit",
            "6",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "6 images" in res.output and "1 error rows" not in res.output  # the error row is past the limit
    index = tmp_path / "rv" / "index.html"
    data = _page_data(index)
    assert len(data["images"]) == 6 and data["more_rows"] is True
    assert data["thresholds"]["per_class"] is True
    by_name = {c["name"]: c for c in data["categories"]}
    assert by_name["person"]["threshold"] == 0.5 and by_name["dog"]["threshold"] == 0.2
    for im in data["images"]:
        for key in ("thumb", "full"):
            assert (tmp_path / "rv" / im[key]).is_file()
        assert im["masks"] is None or (tmp_path / "rv" / im["masks"]).is_file()
        # the tile's "image" link reaches the original file, relative to the page
        assert (index.parent / im["href"]).resolve() == Path(im["uri"]).resolve()
        for p in im["inst"]:
            assert p["m"] is None or len(p["m"]) == 5  # x, y, w, h on the thumbnail + y in the mask sprite
    # all rows, the error one listed with its cause
    s = write_review(str(review_shards), str(tmp_path / "all"), limit=None)
    assert s.images == N_IMAGES and s.errors == 1 and not s.more_rows
    assert _page_data(Path(s.index))["errors"][0]["error"] == "FileNotFoundError: missing.jpg"
    with pytest.raises(ValueError, match="shards folder"):
        write_review(str(tmp_path / "x.json"), str(tmp_path / "bad"))


def _require_chromium() -> str:
    path = find_chromium()
    if path:
        return path
    how = "install it with `bash scripts/install.sh --test` (apt-get install chromium)"
    if os.environ.get("CI") or os.environ.get("NTT_REQUIRE_BROWSER"):
        pytest.fail(f"Chromium not found: {how}")
    pytest.skip(f"Chromium not found and it could not be installed here: {how}")


def test_review_page_in_headless_chromium(review_shards, tmp_path):
    _require_chromium()
    s = write_review(str(review_shards), str(tmp_path / "rv"), thresholds={"person": 0.6})
    data = _page_data(Path(s.index))
    insts = [(p["c"], p["s"]) for im in data["images"] for p in im["inst"]]
    person = [sc for c, sc in insts if c == 1]
    assert len(insts) > 20 and len(person) > 3

    def status(page):
        return page.eval("document.getElementById('status').textContent")

    def shown(page):
        return page.eval(
            "[document.querySelectorAll('.tile:not([hidden])').length, "
            "document.querySelectorAll('.tile:not([hidden]) .inst:not([hidden])').length]"
        )

    def set_control(page, id_, value, event):
        page.eval(
            f"(() => {{ const e = document.getElementById({id_!r}); e.value = {value!r}; "
            f"e.dispatchEvent(new Event({event!r})); }})()"
        )

    with Browser() as b:
        page = b.open(Path(s.index).resolve().as_uri())
        page.eval("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")  # load every image
        page.settle()
        assert page.eval("document.body.dataset.ready") == "1"
        assert page.errors == [], page.errors
        assert page.eval("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.eval("document.querySelectorAll('.tile').length") == N_IMAGES
        # the error row is listed
        assert "FileNotFoundError" in page.eval("document.getElementById('problems').textContent")

        # start: per-class thresholds on (person >= 0.6), slider at 0
        expect = sum(1 for c, sc in insts if c != 1 or sc >= 0.6)
        assert shown(page) == [N_IMAGES, expect], status(page)
        person_row = "document.querySelector('#counts tr[data-c=\"1\"]').children[1].textContent"
        assert int(page.eval(person_row)) == sum(1 for sc in person if sc >= 0.6)

        # the thresholds switch
        page.eval("(() => { const e = document.getElementById('use-thresholds'); e.click(); })()")
        assert shown(page) == [N_IMAGES, len(insts)]
        assert int(page.eval(person_row)) == len(person)

        # class filter: only images with a person, only person instances
        set_control(page, "class", "1", "change")
        with_person = sum(1 for im in data["images"] if any(p["c"] == 1 for p in im["inst"]))
        assert shown(page) == [with_person, len(person)]
        assert (
            page.eval("document.querySelectorAll('.tile:not([hidden]) .inst:not([hidden]):not([data-c=\"1\"])').length")
            == 0
        )

        # score slider: fewer instances, fewer tiles
        cut = sorted(person)[len(person) // 2]
        set_control(page, "score", f"{cut:.2f}", "input")
        n = sum(1 for sc in person if sc >= float(f"{cut:.2f}"))
        tiles = sum(
            1 for im in data["images"] if any(p["c"] == 1 and p["s"] >= float(f"{cut:.2f}") for p in im["inst"])
        )
        assert shown(page) == [tiles, n] and n < len(person)
        assert status(page).startswith(f"{tiles} of {N_IMAGES} images, {n} instances")

        # back to all classes; clicking a class row in the counts table filters too
        set_control(page, "class", "all", "change")
        assert shown(page)[0] == N_IMAGES
        page.eval("document.querySelector('#counts tr[data-c=\"1\"]').click()")
        assert page.eval("document.getElementById('class').value") == "1"
        assert shown(page) == [tiles, n]

        # sorting keeps every tile
        set_control(page, "sort", "top-asc", "change")
        assert page.eval("document.querySelectorAll('.tile').length") == N_IMAGES
        page.settle(0.2)
        assert page.errors == [], page.errors
