"""The review page's HTML (CSS and JavaScript inline; data embedded as JSON). See :mod:`.review`.

Kept as a Python string so it ships with the package without package-data settings. The page
builds its tiles from the embedded JSON; the DOM it produces (used by the browser test):

* ``#class`` (select: ``all`` or a category id), ``#score`` (range 0..1), ``#use-thresholds``
  (checkbox, present with per-class thresholds), ``#show-empty`` (checkbox), ``#sort`` (select);
* ``.tile`` per image (``hidden`` when filtered out), with ``data-id``; inside, ``.inst`` per
  instance (``hidden`` when filtered out) with ``data-c`` (category id) and ``data-s`` (score);
* ``#counts tr[data-c]`` per class: instances and images shown at the current score settings;
* ``#status``: "N of M images, K instances shown".
"""

from __future__ import annotations

import html
import json

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
  :root { --bg: #f4f4f5; --fg: #18181b; --muted: #71717a; --line: #d4d4d8; --accent: #2563eb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--fg); }
  header { position: sticky; top: 0; z-index: 10; background: #fff; border-bottom: 1px solid var(--line); padding: 10px 16px; }
  h1 { font-size: 16px; margin: 0 0 6px; font-weight: 600; overflow-wrap: anywhere; }
  .meta { color: var(--muted); font-size: 12px; margin-bottom: 8px; }
  .controls { display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: center; }
  .controls label { display: inline-flex; gap: 6px; align-items: center; }
  #score { width: 220px; }
  #score-value { font-variant-numeric: tabular-nums; min-width: 2.6em; display: inline-block; }
  #status { font-weight: 600; }
  main { display: flex; gap: 16px; padding: 16px; align-items: flex-start; }
  aside { flex: 0 0 260px; position: sticky; top: 120px; max-height: calc(100vh - 140px); overflow: auto;
          background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
  aside h2 { font-size: 13px; margin: 2px 4px 6px; }
  table { border-collapse: collapse; width: 100%; font-size: 12px; }
  td, th { padding: 3px 4px; text-align: left; }
  th { color: var(--muted); font-weight: 500; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  #counts tr[data-c] { cursor: pointer; }
  #counts tr[data-c]:hover { background: #f1f5f9; }
  #counts tr.selected { background: #dbeafe; }
  #counts tr.zero td { color: #a1a1aa; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
  #grid { flex: 1; display: flex; flex-wrap: wrap; gap: 12px; align-content: flex-start; align-items: flex-start; }
  .tile { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
  .frame { position: relative; display: block; overflow: hidden; background: #e4e4e7; }
  .frame img { display: block; }
  .inst { position: absolute; left: 0; top: 0; pointer-events: none; }
  .mask { position: absolute; background-repeat: no-repeat; }
  .box { position: absolute; border: 1px solid; }
  .tag { position: absolute; font-size: 10px; line-height: 12px; padding: 0 3px; white-space: nowrap; border-radius: 2px; transform: translateY(-100%); }
  .tag.inside { transform: none; }
  figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; display: flex; gap: 8px; justify-content: space-between; max-width: 100%; }
  figcaption .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  figcaption a { color: var(--accent); text-decoration: none; }
  .uri { font-family: ui-monospace, monospace; font-size: 11px; }
  details { margin: 0 16px 16px; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
  details li { overflow-wrap: anywhere; }
  .empty-note { color: var(--muted); padding: 24px; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="meta" id="meta"></div>
  <div class="controls">
    <label>class <select id="class"><option value="all">all classes</option></select></label>
    <label>score &ge; <input id="score" type="range" min="0" max="1" step="0.01" value="0"> <span id="score-value">0.00</span></label>
    <label id="use-thresholds-label" hidden><input id="use-thresholds" type="checkbox" checked> per-class thresholds</label>
    <label><input id="show-empty" type="checkbox" checked> images with nothing shown</label>
    <label>sort <select id="sort">
      <option value="read">as read</option>
      <option value="top-desc">highest score first</option>
      <option value="top-asc">lowest score first</option>
      <option value="count-desc">most instances first</option>
    </select></label>
    <span id="status"></span>
  </div>
</header>
<main>
  <aside>
    <h2>classes <span class="meta">(shown / images)</span></h2>
    <table id="counts"><thead><tr><th>class</th><th class="n">inst.</th><th class="n">img.</th></tr></thead><tbody></tbody></table>
  </aside>
  <div id="grid"></div>
</main>
<details id="problems" hidden><summary id="problems-summary"></summary><ul id="problems-list"></ul></details>
<script type="application/json" id="review-data">__DATA__</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("review-data").textContent);
  const cats = new Map(D.categories.map(function (c) { return [c.id, c]; }));
  const $ = function (id) { return document.getElementById(id); };
  const el = function (tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const textColor = function (hex) {
    const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
    return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  };
  const catName = function (id) { const c = cats.get(id); return c ? c.name : "class " + id; };

  $("title").textContent = D.title;
  document.title = D.title;
  const meta = [];
  if (D.summary) meta.push("run: " + D.summary.rows + " rows (" + D.summary.ok + " ok, " + D.summary.empty + " empty, " + D.summary.error + " error), " + D.summary.instances + " instances");
  meta.push("this page: " + D.images.length + " images" + (D.more_rows ? " (the first " + D.rows_read + " rows; raise --limit for more)" : ""));
  meta.push("thresholds: " + (D.thresholds.describe === "none" ? "none" : D.thresholds.describe));
  if (D.run && D.run.official_weights === false) meta.push("NOT the official weights");
  $("meta").textContent = meta.join(" \u00b7 ");

  const state = { cls: "all", score: 0, useThr: D.thresholds.per_class, showEmpty: true, sort: "read" };
  if (D.thresholds.global !== null && D.thresholds.global !== undefined) state.score = D.thresholds.global;
  $("score").value = String(state.score);
  $("score-value").textContent = Number(state.score).toFixed(2);
  $("use-thresholds-label").hidden = !D.thresholds.per_class;

  // class filter + counts table
  const rows = new Map();
  D.categories.forEach(function (c) {
    const o = el("option", null, c.name + " (id " + c.id + ")");
    o.value = String(c.id);
    $("class").appendChild(o);
    const tr = el("tr");
    tr.dataset.c = String(c.id);
    const td = el("td");
    const sw = el("span", "swatch");
    sw.style.background = c.color;
    td.appendChild(sw);
    td.appendChild(document.createTextNode(c.name));
    if (c.threshold !== null && c.threshold !== undefined && D.thresholds.per_class) td.title = "threshold " + c.threshold;
    tr.appendChild(td);
    const ni = el("td", "n", "0"), nm = el("td", "n", "0");
    tr.appendChild(ni);
    tr.appendChild(nm);
    tr.addEventListener("click", function () {
      const v = state.cls === String(c.id) ? "all" : String(c.id);
      $("class").value = v;
      state.cls = v;
      update();
    });
    $("counts").tBodies[0].appendChild(tr);
    rows.set(c.id, { tr: tr, inst: ni, img: nm });
  });

  // tiles
  const grid = $("grid");
  const tiles = D.images.map(function (im, k) {
    const fig = el("figure", "tile");
    fig.dataset.id = String(im.id);
    const a = el("a", "frame");
    a.href = im.full;
    a.title = im.uri + " (" + im.W + "\u00d7" + im.H + "): open the full overlay";
    a.style.width = im.w + "px";
    a.style.height = im.h + "px";
    const img = el("img");
    img.src = im.thumb;
    img.width = im.w;
    img.height = im.h;
    img.alt = "image " + im.id;
    img.loading = "lazy";
    a.appendChild(img);
    const insts = im.inst.map(function (p) {
      const c = cats.get(p.c), color = c ? c.color : "#888888";
      const g = el("div", "inst");
      g.dataset.c = String(p.c);
      g.dataset.s = String(p.s);
      if (p.m && im.masks) {
        const m = el("div", "mask");
        m.style.left = p.m[0] + "px"; m.style.top = p.m[1] + "px";
        m.style.width = p.m[2] + "px"; m.style.height = p.m[3] + "px";
        m.style.backgroundImage = "url(\"" + im.masks + "\")";
        m.style.backgroundPosition = "0 -" + p.m[4] + "px";
        g.appendChild(m);
      }
      const b = el("div", "box");
      b.style.left = p.b[0] + "px"; b.style.top = p.b[1] + "px";
      b.style.width = p.b[2] + "px"; b.style.height = p.b[3] + "px";
      b.style.borderColor = color;
      g.appendChild(b);
      const t = el("span", "tag" + (p.b[1] < 12 ? " inside" : ""), catName(p.c) + " " + p.s.toFixed(2));
      t.style.left = Math.min(p.b[0], Math.max(0, im.w - 60)) + "px";
      t.style.top = p.b[1] + "px";
      t.style.background = color;
      t.style.color = textColor(color);
      g.appendChild(t);
      a.appendChild(g);
      return { el: g, c: p.c, s: p.s };
    });
    fig.appendChild(a);
    const cap = el("figcaption");
    const name = el("span", "name", String(im.id));
    name.title = im.uri;
    cap.appendChild(name);
    const count = el("span", "count");
    cap.appendChild(count);
    if (im.href) {
      const o = el("a", null, "image");
      o.href = im.href;
      o.title = im.uri;
      cap.appendChild(o);
    } else {
      const u = el("span", "uri", "uri");
      u.title = im.uri;
      cap.appendChild(u);
    }
    fig.style.width = (im.w + 14) + "px";
    fig.appendChild(cap);
    grid.appendChild(fig);
    const top = im.inst.reduce(function (m, p) { return Math.max(m, p.s); }, -1);
    return { el: fig, insts: insts, count: count, k: k, top: top, n: im.inst.length };
  });
  if (!tiles.length) grid.appendChild(el("div", "empty-note", "No image to show: the output has no processed row yet, or no image was found (see below)."));

  // problems: error rows and images that could not be drawn
  const probs = D.errors.map(function (e) { return "image " + e.id + " " + e.uri + ": " + e.error; })
    .concat(D.skipped.map(function (s) { return "not drawn: image " + s.image_id + " " + s.image_uri + ": " + s.reason; }));
  if (probs.length) {
    $("problems").hidden = false;
    $("problems-summary").textContent = D.error_count + " image(s) with status error, " + D.skipped.length + " not drawn";
    probs.forEach(function (p) { $("problems-list").appendChild(el("li", null, p)); });
  }

  function passes(p) {
    if (p.s < state.score) return false;
    if (state.useThr) {
      const c = cats.get(p.c);
      if (c && c.threshold !== null && c.threshold !== undefined && p.s < c.threshold) return false;
    }
    return true;
  }

  function update() {
    const perInst = new Map(), perImg = new Map();
    let shownTiles = 0, shownInst = 0;
    tiles.forEach(function (t) {
      let n = 0;
      const seen = new Set();
      t.insts.forEach(function (p) {
        const ok = passes(p);
        if (ok) {
          perInst.set(p.c, (perInst.get(p.c) || 0) + 1);
          if (!seen.has(p.c)) { seen.add(p.c); perImg.set(p.c, (perImg.get(p.c) || 0) + 1); }
        }
        const show = ok && (state.cls === "all" || String(p.c) === state.cls);
        p.el.hidden = !show;
        if (show) n += 1;
      });
      const visible = n > 0 || (state.cls === "all" && state.showEmpty);
      t.el.hidden = !visible;
      t.count.textContent = n + " shown";
      if (visible) { shownTiles += 1; shownInst += n; }
    });
    rows.forEach(function (r, id) {
      r.inst.textContent = String(perInst.get(id) || 0);
      r.img.textContent = String(perImg.get(id) || 0);
      r.tr.classList.toggle("selected", String(id) === state.cls);
      r.tr.classList.toggle("zero", !perInst.get(id));
    });
    $("status").textContent = shownTiles + " of " + tiles.length + " images, " + shownInst + " instances shown";
  }

  function sortTiles() {
    const order = tiles.slice();
    const key = {
      "read": function (t) { return t.k; },
      "top-desc": function (t) { return -t.top; },
      "top-asc": function (t) { return t.top < 0 ? 2 : t.top; },
      "count-desc": function (t) { return -t.n; }
    }[state.sort];
    order.sort(function (a, b) { return key(a) - key(b) || a.k - b.k; });
    order.forEach(function (t) { grid.appendChild(t.el); });
  }

  $("class").addEventListener("change", function (e) { state.cls = e.target.value; update(); });
  $("score").addEventListener("input", function (e) {
    state.score = parseFloat(e.target.value);
    $("score-value").textContent = state.score.toFixed(2);
    update();
  });
  $("use-thresholds").addEventListener("change", function (e) { state.useThr = e.target.checked; update(); });
  $("show-empty").addEventListener("change", function (e) { state.showEmpty = e.target.checked; update(); });
  $("sort").addEventListener("change", function (e) { state.sort = e.target.value; sortTiles(); });
  update();
  document.body.dataset.ready = "1";
})();
</script>
</body>
</html>
"""


def render_page(data: dict) -> str:
    """The page with ``data`` embedded (``</`` escaped so no string can close the script element)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    payload = payload.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return PAGE.replace("__TITLE__", html.escape(str(data.get("title", "ntt-batch review")))).replace(
        "__DATA__", payload, 1
    )
