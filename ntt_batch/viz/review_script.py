"""The review page's JavaScript, inlined by :func:`.review_template.render_page` (the DOM it builds: see there)."""

JS = r"""
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("review-data").textContent);
  const $ = function (id) { return document.getElementById(id); };
  const el = function (tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const cats = new Map(D.categories.map(function (c) { return [c.id, c]; }));
  const orders = new Map(D.orderings.map(function (o) { return [o.key, o]; }));
  const catName = function (id) { const c = cats.get(id); return c ? c.name : "class " + id; };
  const catColor = function (id) { const c = cats.get(id); return c ? c.color : "#888888"; };
  const textColor = function (hex) {
    const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
    return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  };
  const pad5 = function (n) { return String(n).padStart(5, "0"); };
  const STORE = "ntt-batch-review:" + D.key;

  const S = { order: "file", page: 0, cur: -1, inst: 0, cls: "all", score: 0, useThr: D.thresholds.per_class,
              showEmpty: true, full: false, loading: false };
  if (D.thresholds.global !== null && D.thresholds.global !== undefined) S.score = D.thresholds.global;
  let tiles = [];            // the current page's tiles: {e, el, insts: [{p, el}], count}
  const decisions = new Map(); // image_uri + "\u0000" + instance index -> decision
  const undoStack = [];

  /* ---------------------------------------------------------------- decisions */
  const dkey = function (uri, k) { return uri + "\u0000" + k; };
  function loadStore() {
    try {
      const s = JSON.parse(localStorage.getItem(STORE) || "null");
      if (s && Array.isArray(s.decisions)) s.decisions.forEach(function (d) { decisions.set(dkey(d.image_uri, d.instance), d); });
      if (s && s.reviewer) $("reviewer").value = s.reviewer;
    } catch (err) { console.warn("review: could not read the saved decisions", err); }
  }
  function decisionList() {
    return Array.from(decisions.values()).sort(function (a, b) {
      return a.image_uri < b.image_uri ? -1 : a.image_uri > b.image_uri ? 1 : a.instance - b.instance;
    });
  }
  function decisionDoc() {
    return {
      format: "ntt-batch/review-decisions", version: 1,
      output: D.output, run_id: D.run_id, run_ids: D.run_ids, memory_bank_hash: D.memory_bank_hash,
      review: { created_at: D.created_at, thresholds: D.thresholds.describe, seed: D.seed, limit: D.limit },
      categories: D.categories.map(function (c) { return { id: c.id, name: c.name }; }),
      reviewer: $("reviewer").value.trim() || null,
      saved_at: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      decisions: decisionList()
    };
  }
  let postTimer = null, serverOk = /^https?:$/.test(location.protocol);
  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify({ reviewer: $("reviewer").value.trim(), decisions: decisionList() }));
      $("save-status").textContent = "kept in this browser; download to keep a file";
    } catch (err) { $("save-status").textContent = "could not keep the decisions in this browser: download them"; }
    renderCount();
    if (serverOk) { clearTimeout(postTimer); postTimer = setTimeout(postToServer, 300); }
  }
  function postToServer() {
    fetch("decisions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(decisionDoc()) })
      .then(function (r) {
        if (r.ok) return r.json().then(function (j) { $("save-status").textContent = "saved to " + j.path + " (" + j.decisions + ")"; document.body.dataset.saved = String(j.decisions); });
        if (r.status === 404 || r.status === 405 || r.status === 501) { serverOk = false; return; }
        return r.text().then(function (t) { $("save-status").textContent = "the server refused the decisions: " + t; });
      })
      .catch(function () { serverOk = false; });
  }
  function renderCount() {
    const n = { accept: 0, reject: 0, relabel: 0 };
    decisions.forEach(function (d) { n[d.action] += 1; });
    $("decision-count").textContent = decisions.size + " (" + n.accept + " accepted, " + n.reject + " rejected, " + n.relabel + " relabelled)";
  }
  function download() {
    const text = JSON.stringify(decisionDoc(), null, 1) + "\n";
    window.__lastDecisions = text;
    const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    const a = el("a");
    a.href = url; a.download = "decisions.json";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  }
  function setDecision(e, p, action, cid) {
    const key = dkey(e.uri, p.k);
    undoStack.push({ key: key, prev: decisions.get(key) || null, r: e.r });
    const newCid = action === "relabel" ? cid : p.c;
    decisions.set(key, {
      image_id: e.id, image_uri: e.uri, instance: p.k, action: action, category_id: newCid, category_name: catName(newCid),
      original: { category_id: p.c, category_name: p.n || catName(p.c), score: p.s, bbox: p.b },
      reviewer: $("reviewer").value.trim() || null,
      decided_at: new Date().toISOString().replace(/\.\d+Z$/, "Z")
    });
  }
  function decide(action, cid) {
    const t = tiles[S.cur];
    const vis = t ? visibleInsts(t) : [];
    if (!vis.length) return;
    setDecision(t.e, vis[S.inst].p, action, cid);
    save();
    refreshMarks(t);
    if (S.inst + 1 < vis.length) S.inst += 1; else if (!nextImage()) S.inst = vis.length - 1;
    renderCursor();
  }
  function acceptAll() {
    const t = tiles[S.cur];
    if (!t) return;
    visibleInsts(t).forEach(function (i) { if (!decisions.has(dkey(t.e.uri, i.p.k))) setDecision(t.e, i.p, "accept"); });
    save(); refreshMarks(t); renderCursor();
  }
  function undo() {
    const u = undoStack.pop();
    if (!u) return;
    if (u.prev) decisions.set(u.key, u.prev); else decisions.delete(u.key);
    save();
    const k = Number(u.key.split("\u0000")[1]);
    const ti = tiles.findIndex(function (t) { return t.e.r === u.r; });
    if (ti >= 0) {
      refreshMarks(tiles[ti]);
      S.cur = ti;
      const vi = visibleInsts(tiles[ti]).findIndex(function (i) { return i.p.k === k; });
      S.inst = vi >= 0 ? vi : 0;
    }
    renderCursor();
  }

  /* ---------------------------------------------------------------- drawing */
  function drawInst(e, p, scaleKey, holder) {
    const v = e[scaleKey], sc = v.w / e.W, place = scaleKey === "t" ? p.m : p.fm;
    const g = el("div", "inst");
    g.dataset.c = String(p.c); g.dataset.s = String(p.s); g.dataset.k = String(p.k);
    if (place && v.masks) {
      const m = el("div", "mask");
      m.style.left = place[0] + "px"; m.style.top = place[1] + "px";
      m.style.width = place[2] + "px"; m.style.height = place[3] + "px";
      m.style.backgroundImage = "url(\"" + v.masks + "\")";
      m.style.backgroundPosition = "-" + place[4] + "px -" + place[5] + "px";
      g.appendChild(m);
    }
    const bx = p.b[0] * sc, by = p.b[1] * sc, bw = Math.max(1, p.b[2] * sc), bh = Math.max(1, p.b[3] * sc);
    const b = el("div", "box"), color = catColor(p.c);
    b.style.left = bx + "px"; b.style.top = by + "px"; b.style.width = bw + "px"; b.style.height = bh + "px";
    b.style.borderColor = color;
    g.appendChild(b);
    const t = el("span", "tag" + (by < 14 ? " inside" : ""));
    const guess = (catName(p.c).length + 16) * (scaleKey === "t" ? 5.6 : 7.2);  // the tag's width, px (roughly)
    t.style.left = Math.max(0, Math.min(bx, v.w - guess)) + "px"; t.style.top = by + "px";
    t.style.background = color; t.style.color = textColor(color);
    g.appendChild(t);
    holder.appendChild(g);
    return g;
  }
  function markInst(g, e, p) {
    const d = decisions.get(dkey(e.uri, p.k));
    g.classList.toggle("acc", !!d && d.action === "accept");
    g.classList.toggle("rej", !!d && d.action === "reject");
    g.classList.toggle("rel", !!d && d.action === "relabel");
    const badge = !d ? "" : d.action === "accept" ? " \u2713" : d.action === "reject" ? " \u2717" : " \u2192 " + catName(d.category_id);
    g.querySelector(".tag").textContent = catName(p.c) + " " + p.s.toFixed(2) + badge;
  }
  function makeTile(e, k) {
    const fig = el("figure", "tile");
    fig.dataset.r = String(e.r); fig.dataset.id = String(e.id); fig.dataset.uri = e.uri;
    if (e.conf !== undefined) fig.dataset.conf = String(e.conf);
    const frame = el("div", "frame");
    const insts = [];
    if (e.t) {
      frame.style.width = e.t.w + "px"; frame.style.height = e.t.h + "px";
      const img = el("img");
      img.src = e.t.src; img.width = e.t.w; img.height = e.t.h; img.alt = e.name;
      frame.appendChild(img);
      e.inst.forEach(function (p) { insts.push({ p: p, el: drawInst(e, p, "t", frame) }); });
    } else {
      frame.style.width = "240px";
      frame.appendChild(el("div", "note", e.error ? "error: " + e.error : "not drawn: " + (e.problem || "")));
      e.inst.forEach(function (p) { insts.push({ p: p, el: null }); });
    }
    fig.appendChild(frame);
    const cap = el("figcaption");
    const name = el("span", "name", e.name);
    name.title = e.uri;
    cap.appendChild(name);
    const line = el("div", "line");
    cap.appendChild(line);
    const count = el("span", "count");
    line.appendChild(count);
    if (e.t) { const b = el("button", "open-full", "full"); b.title = "full view (f)"; b.addEventListener("click", function (ev) { ev.stopPropagation(); select(k); openFull(); }); line.appendChild(b); }
    if (e.href) { const a = el("a", null, "image"); a.href = e.href; a.title = e.uri; a.target = "_blank"; a.addEventListener("click", function (ev) { ev.stopPropagation(); }); line.appendChild(a); }
    fig.style.width = (Math.max(150, e.t ? e.t.w : 240) + 14) + "px";
    fig.appendChild(cap);
    fig.addEventListener("click", function () { select(k); });
    fig.addEventListener("dblclick", function () { select(k); openFull(); });
    const t = { e: e, el: fig, insts: insts, count: count };
    refreshMarks(t);
    return t;
  }
  function refreshMarks(t) {
    t.insts.forEach(function (i) { if (i.el) markInst(i.el, t.e, i.p); });
    const vis = visibleInsts(t);
    const done = vis.filter(function (i) { return decisions.has(dkey(t.e.uri, i.p.k)); }).length;
    t.count.textContent = vis.length + " shown" + (done ? ", " + done + " decided" : "");
    t.el.classList.toggle("done", vis.length > 0 && done === vis.length);
    if (S.full && tiles[S.cur] === t) renderFull();
    if (tiles[S.cur] === t) renderInspector();
  }

  /* ---------------------------------------------------------------- filters */
  function passes(p) {
    if (p.s < S.score) return false;
    if (S.useThr) {
      const c = cats.get(p.c);
      if (c && c.threshold !== null && c.threshold !== undefined && p.s < c.threshold) return false;
    }
    return true;
  }
  const shows = function (p) { return passes(p) && (S.cls === "all" || String(p.c) === S.cls); };
  function visibleInsts(t) { return t.insts.filter(function (i) { return shows(i.p); }); }
  function update() {
    const perInst = new Map();
    let shownTiles = 0, shownInst = 0;
    tiles.forEach(function (t) {
      let n = 0;
      t.insts.forEach(function (i) {
        if (passes(i.p)) perInst.set(i.p.c, (perInst.get(i.p.c) || 0) + 1);
        const show = shows(i.p);
        if (i.el) i.el.hidden = !show;
        if (show) n += 1;
      });
      const visible = n > 0 || (S.cls === "all" && S.showEmpty);
      t.el.hidden = !visible;
      if (visible) { shownTiles += 1; shownInst += n; }
      refreshMarks(t);
    });
    countRows.forEach(function (r, id) {
      r.page.textContent = String(perInst.get(id) || 0);
      r.tr.classList.toggle("selected", String(id) === S.cls);
      r.tr.classList.toggle("zero", !perInst.get(id));
    });
    $("status").textContent = shownTiles + " of " + tiles.length + " images, " + shownInst + " instances shown";
    if (S.cur >= 0 && tiles[S.cur] && tiles[S.cur].el.hidden) S.cur = firstVisible(0, 1);
    renderCursor();
  }

  /* ---------------------------------------------------------------- paging */
  const pageCache = new Map();
  let pending = null;
  window.__nttReviewPage = function (p) {
    pageCache.set(p.ordering + "/" + p.page, p);
    if (pageCache.size > 8) pageCache.delete(pageCache.keys().next().value);
    if (pending && pending.key === p.ordering + "/" + p.page) { const cb = pending.cb; pending = null; cb(p); }
  };
  function fetchPage(order, page, cb) {
    const key = order + "/" + page;
    if (pageCache.has(key)) { cb(pageCache.get(key)); return; }
    pending = { key: key, cb: cb };
    const s = el("script");
    s.src = "data/" + order + "/page-" + pad5(page) + ".js";
    s.onload = function () { s.remove(); };
    s.onerror = function () { s.remove(); if (pending && pending.key === key) { pending = null; $("grid").textContent = "could not load " + s.src; } };
    document.head.appendChild(s);
  }
  function orderKey() { return S.order === "class" ? "class-" + S.cls : S.order; }
  function showPage(page, cursor, then) {
    const o = orders.get(orderKey());
    S.page = page; S.loading = true;
    const done = function (data) {
      S.loading = false;
      buildPage(data ? data.images : []);
      S.cur = tiles.length ? (cursor === "last" ? firstVisible(tiles.length - 1, -1) : firstVisible(cursor || 0, 1)) : -1;
      S.inst = 0;
      renderCursor();
      if (then) then();
      document.body.dataset.ready = "1";
    };
    renderPager();
    if (!o || !o.pages) { done(null); return; }
    fetchPage(orderKey(), page, done);
  }
  function buildPage(images) {
    const grid = $("grid");
    grid.textContent = "";
    tiles = images.map(makeTile);
    tiles.forEach(function (t) { grid.appendChild(t.el); });
    if (!tiles.length) grid.appendChild(el("div", "empty-note", "No image in this ordering."));
    update();
  }
  function renderPager() {
    const o = orders.get(orderKey());
    const pages = o ? o.pages : 0, n = o ? o.images : 0, ps = D.page_size;
    $("page-info").textContent = pages ? "page " + (S.page + 1) + " of " + pages + " \u00b7 images " + (S.page * ps + 1) + "\u2013" + Math.min(n, (S.page + 1) * ps) + " of " + n : "no image";
    $("prev-page").disabled = S.page <= 0;
    $("next-page").disabled = S.page + 1 >= pages;
    document.querySelectorAll("#orders button").forEach(function (b) { b.classList.toggle("on", b.dataset.o === S.order); });
    history.replaceState(null, "", "#o=" + S.order + "&c=" + S.cls + "&p=" + S.page);
  }
  function gotoPage(page, cursor) {
    const o = orders.get(orderKey());
    if (!o || page < 0 || page >= o.pages || S.loading) return false;
    showPage(page, cursor);
    return true;
  }
  function setOrder(order) {
    if (order === "class" && S.cls === "all") {
      const first = D.orderings.find(function (o) { return o.key.indexOf("class-") === 0 && o.images > 0; });
      if (!first) return;
      S.cls = first.key.slice(6); $("class").value = S.cls;
    }
    S.order = order;
    showPage(0, 0);
  }

  /* ---------------------------------------------------------------- cursor */
  function firstVisible(from, step) {
    for (let i = from; i >= 0 && i < tiles.length; i += step) if (!tiles[i].el.hidden) return i;
    return -1;
  }
  function nextImage() {
    const i = firstVisible(S.cur + 1, 1);
    if (i >= 0) { S.cur = i; S.inst = 0; renderCursor(); return true; }
    return gotoPage(S.page + 1, 0);
  }
  function prevImage() {
    const i = S.cur > 0 ? firstVisible(S.cur - 1, -1) : -1;
    if (i >= 0) { S.cur = i; S.inst = 0; renderCursor(); return true; }
    return gotoPage(S.page - 1, "last");
  }
  function moveInst(step) {
    const t = tiles[S.cur];
    const n = t ? visibleInsts(t).length : 0;
    if (!n) return;
    S.inst = (S.inst + step + n) % n;
    renderCursor();
  }
  function select(k) { S.cur = k; S.inst = 0; renderCursor(); }
  function renderCursor() {
    const t = tiles[S.cur];
    const vis = t ? visibleInsts(t) : [];
    if (S.inst >= vis.length) S.inst = Math.max(0, vis.length - 1);
    tiles.forEach(function (x) {
      x.el.classList.toggle("current", x === t);
      x.insts.forEach(function (i) { if (i.el) i.el.classList.remove("current"); });
    });
    if (t && vis.length && vis[S.inst].el) vis[S.inst].el.classList.add("current");
    if (t && !S.full) t.el.scrollIntoView({ block: "nearest" });
    renderInspector();
    if (S.full) renderFull();
  }
  function renderInspector() {
    const t = tiles[S.cur], list = $("inspector-list");
    list.textContent = "";
    $("inspector-name").textContent = t ? t.e.name : "(none)";
    $("inspector-name").title = t ? t.e.uri : "";
    if (!t) return;
    visibleInsts(t).forEach(function (i, j) {
      const li = el("li", j === S.inst ? "current" : "");
      li.dataset.k = String(i.p.k);
      const sw = el("span", "swatch"); sw.style.background = catColor(i.p.c);
      li.appendChild(sw);
      li.appendChild(el("span", "lbl", catName(i.p.c) + " " + i.p.s.toFixed(2)));
      const d = decisions.get(dkey(t.e.uri, i.p.k));
      if (d) li.appendChild(el("span", "badge " + d.action.slice(0, 3), d.action === "relabel" ? "\u2192 " + catName(d.category_id) : d.action));
      [["\u2713", "accept (a)", function () { decide("accept"); }], ["\u2717", "reject (r)", function () { decide("reject"); }],
       ["\u270e", "change class (c)", openPicker]].forEach(function (b) {
        const btn = el("button", null, b[0]); btn.title = b[1];
        btn.addEventListener("click", function (ev) { ev.stopPropagation(); S.inst = j; b[2](); });
        li.appendChild(btn);
      });
      li.addEventListener("click", function () { S.inst = j; renderCursor(); });
      list.appendChild(li);
    });
  }

  /* ---------------------------------------------------------------- full view */
  function openFull() { if (!tiles[S.cur] || !tiles[S.cur].e.f) return; S.full = true; $("full").hidden = false; $("grid").hidden = true; renderFull(); }
  function closeFull() { S.full = false; $("full").hidden = true; $("grid").hidden = false; renderCursor(); }
  function renderFull() {
    const t = tiles[S.cur];
    if (!t || !t.e.f) { closeFull(); return; }
    const e = t.e, stage = $("full-stage");
    stage.textContent = "";
    $("full-name").textContent = e.name + "  (" + e.W + "\u00d7" + e.H + ")";
    $("full-name").title = e.uri;
    $("full-orig").hidden = !e.href; if (e.href) $("full-orig").href = e.href;
    const img = el("img"); img.src = e.f.src; img.width = e.f.w; img.height = e.f.h; img.alt = e.name;
    stage.appendChild(img);
    const vis = visibleInsts(t);
    vis.forEach(function (i, j) {
      const g = drawInst(e, i.p, "f", stage);
      markInst(g, e, i.p);
      if (j === S.inst) g.classList.add("current");
    });
    const outer = $("full-stage-outer");
    const availW = $("full").clientWidth - 18, availH = window.innerHeight - $("full").getBoundingClientRect().top - 60;
    const z = Math.max(0.1, Math.min(2, availW / e.f.w, Math.max(0.2, availH / e.f.h)));
    stage.style.transform = "scale(" + z + ")";
    outer.style.width = (e.f.w * z) + "px"; outer.style.height = (e.f.h * z) + "px";
  }

  /* ---------------------------------------------------------------- class picker */
  let pickerItems = [], pickerHl = 0;
  function openPicker() {
    const t = tiles[S.cur];
    if (!t || !visibleInsts(t).length) return;
    $("picker").hidden = false; $("picker-filter").value = ""; renderPicker(); $("picker-filter").focus();
  }
  function closePicker() { $("picker").hidden = true; $("picker-filter").blur(); }
  function renderPicker() {
    const q = $("picker-filter").value.trim().toLowerCase();
    pickerItems = D.categories.filter(function (c) { return !q || c.name.toLowerCase().indexOf(q) >= 0 || String(c.id) === q; });
    pickerHl = Math.min(pickerHl, Math.max(0, pickerItems.length - 1));
    const list = $("picker-list");
    list.textContent = "";
    pickerItems.forEach(function (c, j) {
      const li = el("li", j === pickerHl ? "hl" : "");
      li.dataset.c = String(c.id);
      li.appendChild(el("span", "num", j < 10 ? String((j + 1) % 10) : ""));
      const sw = el("span", "swatch"); sw.style.background = c.color; li.appendChild(sw);
      li.appendChild(document.createTextNode(c.name + " (id " + c.id + ")"));
      li.addEventListener("click", function () { pick(c.id); });
      list.appendChild(li);
    });
  }
  function pick(cid) { closePicker(); decide("relabel", cid); }
  $("picker-filter").addEventListener("input", function () { pickerHl = 0; renderPicker(); });
  $("picker-filter").addEventListener("keydown", function (ev) {
    if (/^[0-9]$/.test(ev.key)) {
      ev.preventDefault();
      const j = ev.key === "0" ? 9 : Number(ev.key) - 1;
      if (pickerItems[j]) pick(pickerItems[j].id);
    } else if (ev.key === "Enter") { ev.preventDefault(); if (pickerItems[pickerHl]) pick(pickerItems[pickerHl].id); }
    else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      pickerHl = Math.max(0, Math.min(pickerItems.length - 1, pickerHl + (ev.key === "ArrowDown" ? 1 : -1)));
      renderPicker();
    } else if (ev.key === "Escape") { ev.preventDefault(); closePicker(); }
    ev.stopPropagation();
  });

  /* ---------------------------------------------------------------- keys */
  const KEYS = {
    "j": nextImage, "ArrowRight": nextImage, "k": prevImage, "ArrowLeft": prevImage,
    "n": function () { moveInst(1); }, "p": function () { moveInst(-1); },
    "a": function () { decide("accept"); }, "r": function () { decide("reject"); }, "c": openPicker,
    "A": acceptAll, "u": undo,
    "f": function () { if (S.full) closeFull(); else openFull(); }, "Enter": openFull,
    "]": function () { gotoPage(S.page + 1, 0); }, "PageDown": function () { gotoPage(S.page + 1, 0); },
    "[": function () { gotoPage(S.page - 1, 0); }, "PageUp": function () { gotoPage(S.page - 1, 0); },
    "?": function () { $("help").hidden = !$("help").hidden; }
  };
  document.addEventListener("keydown", function (ev) {
    const tg = ev.target, tag = tg && tg.tagName;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "Escape") {
      if (!$("help").hidden) $("help").hidden = true; else if (S.full) closeFull();
      if (tag === "INPUT" || tag === "SELECT") tg.blur();
      return;
    }
    if (tag === "TEXTAREA" || (tag === "INPUT" && tg.type === "text")) return;
    if ((tag === "SELECT" || (tag === "INPUT" && tg.type === "range")) && /^(Arrow|Page|Home|End)/.test(ev.key)) return;
    if (ev.key === "Enter" && (tag === "BUTTON" || tag === "A" || tag === "SELECT")) return;
    if (!$("help").hidden && ev.key !== "?") return;
    if (ev.key === "Tab") { ev.preventDefault(); moveInst(ev.shiftKey ? -1 : 1); return; }
    const f = KEYS[ev.key];
    if (f) { ev.preventDefault(); f(); }
  });

  /* ---------------------------------------------------------------- header, counts, controls */
  $("title").textContent = D.title;
  document.title = D.title;
  const meta = [];
  meta.push(D.rows + " rows (" + D.status.ok + " ok, " + D.status.empty + " empty, " + D.status.error + " error)");
  meta.push(D.categories.reduce(function (a, c) { return a + c.instances; }, 0) + " instances");
  meta.push("thresholds: " + D.thresholds.describe);
  if (D.max_rows && D.max_rows < D.rows) meta.push("file order: the first " + D.max_rows + " rows");
  meta.push("review budget " + (D.limit || "all") + " images per sampled ordering");
  if (D.official_weights === false) meta.push("NOT the official weights");
  $("meta").textContent = meta.join(" \u00b7 ");
  S.score = Number(S.score);
  $("score").value = String(S.score);
  $("score-value").textContent = S.score.toFixed(2);
  $("use-thresholds-label").hidden = !D.thresholds.per_class;
  const countRows = new Map();
  D.categories.forEach(function (c) {
    if (!c.instances) return;  // in the class picker, not in the filter and the counts
    const o = el("option", null, c.name + " (id " + c.id + ")");
    o.value = String(c.id);
    $("class").appendChild(o);
    const tr = el("tr");
    tr.dataset.c = String(c.id);
    const td = el("td");
    const sw = el("span", "swatch"); sw.style.background = c.color;
    td.appendChild(sw);
    td.appendChild(document.createTextNode(c.name));
    if (c.threshold !== null && c.threshold !== undefined && D.thresholds.per_class) td.title = "threshold " + c.threshold;
    tr.appendChild(td);
    const np = el("td", "n", "0");
    tr.appendChild(np);
    tr.appendChild(el("td", "n", String(c.kept)));
    tr.addEventListener("click", function () { setClass(S.cls === String(c.id) ? "all" : String(c.id)); });
    $("counts").tBodies[0].appendChild(tr);
    countRows.set(c.id, { tr: tr, page: np });
  });
  function setClass(v) {
    $("class").value = v; S.cls = v;
    if (S.order === "class") { if (v === "all") setOrder("file"); else showPage(0, 0); }
    else update();
    renderPager();
  }
  const probs = D.errors.map(function (e) { return "row " + e.row + ": image " + e.id + " " + e.uri + ": " + e.error; })
    .concat(D.skipped.map(function (s) { return "not drawn: image " + s.image_id + " " + s.image_uri + ": " + s.reason; }));
  if (probs.length) {
    $("problems").hidden = false;
    $("problems-summary").textContent = D.error_count + " image(s) with status error, " + D.skipped_count + " not drawn";
    probs.forEach(function (p) { $("problems-list").appendChild(el("li", null, p)); });
  }
  $("class").addEventListener("change", function (e) { setClass(e.target.value); });
  $("score").addEventListener("input", function (e) {
    S.score = parseFloat(e.target.value);
    $("score-value").textContent = S.score.toFixed(2);
    update();
  });
  $("use-thresholds").addEventListener("change", function (e) { S.useThr = e.target.checked; update(); });
  $("show-empty").addEventListener("change", function (e) { S.showEmpty = e.target.checked; update(); });
  document.querySelectorAll("#orders button").forEach(function (b) {
    b.addEventListener("click", function () { b.blur(); setOrder(b.dataset.o); });
    if (b.dataset.o !== "class" && !(orders.get(b.dataset.o) || {}).images) b.disabled = true;
  });
  $("prev-page").addEventListener("click", function () { gotoPage(S.page - 1, 0); });
  $("next-page").addEventListener("click", function () { gotoPage(S.page + 1, 0); });
  $("full-prev").addEventListener("click", prevImage);
  $("full-next").addEventListener("click", nextImage);
  $("full-close").addEventListener("click", closeFull);
  $("download").addEventListener("click", download);
  $("picker").addEventListener("click", function (ev) { if (ev.target === $("picker")) closePicker(); });
  $("help").addEventListener("click", function (ev) { if (ev.target === $("help")) $("help").hidden = true; });
  $("reviewer").addEventListener("change", save);
  window.addEventListener("resize", function () { if (S.full) renderFull(); });
  window.__review = { state: S, decisions: decisionList, document: decisionDoc };

  loadStore();
  renderCount();
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("c") && (h.get("c") === "all" || cats.has(Number(h.get("c"))))) { S.cls = h.get("c"); $("class").value = S.cls; }
  if (h.get("o") && (h.get("o") === "class" ? S.cls !== "all" : orders.has(h.get("o")))) S.order = h.get("o");
  const p0 = Number(h.get("p") || 0), o0 = orders.get(orderKey());
  showPage(o0 && p0 >= 0 && p0 < o0.pages ? p0 : 0, 0);
})();
"""
