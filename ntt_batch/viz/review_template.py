"""The review page's HTML (CSS from :mod:`.review_style` and JavaScript from :mod:`.review_script` inline; the index embedded as JSON). See :mod:`.review`.

Kept as Python strings so they ship with the package without package-data settings. The page
loads one data page at a time (``data/<ordering>/page-NNNNN.js``, a script calling
``__nttReviewPage``) and builds its tiles from it. The DOM it produces (used by the browser test):

* ``#orders button[data-o]`` (``file``, ``sample``, ``low``, ``class``: the class filter's class),
  ``#prev-page``/``#next-page``, ``#page-info``; ``#class`` (select: ``all`` or a category id),
  ``#score`` (range 0..1), ``#use-thresholds`` (checkbox, with per-class thresholds),
  ``#show-empty`` (checkbox);
* ``.tile`` per image of the page (``hidden`` when filtered out; ``.current`` for the cursor),
  with ``data-r`` (row number), ``data-id``, ``data-uri`` and ``data-conf`` (in ``low``); inside,
  ``.name`` (the file name; the URI in its title) and ``.inst`` per instance (``hidden`` when
  filtered out; ``.current``; ``.acc``/``.rej``/``.rel`` once decided) with ``data-c``, ``data-s``, ``data-k``;
* ``#full`` (the full view of the current image; ``hidden`` when closed) with the same ``.inst``;
* ``#inspector`` (the current image's instances, with buttons), ``#decision-count``,
  ``#reviewer``, ``#download``, ``#save-status``; ``#picker`` (class picker), ``#help``;
* ``#counts tr[data-c]`` per class; ``#status``: "N of M images, K instances shown";
* ``window.__review``: ``{state, decisions(), document()}``; ``window.__lastDecisions``: the text of
  the last download.
"""

from __future__ import annotations

import html
import json

from .review_script import JS
from .review_style import CSS

BODY = r"""
<header>
  <h1 id="title"></h1>
  <div class="meta" id="meta"></div>
  <div class="controls">
    <span id="orders">
      <button data-o="file">file order</button><button data-o="sample">random sample</button><button data-o="low">lowest confidence</button><button data-o="class">per class</button>
    </span>
    <span class="pager"><button id="prev-page" title="previous page ([)">&#8249;</button> <span id="page-info"></span> <button id="next-page" title="next page (])">&#8250;</button></span>
    <label>class <select id="class"><option value="all">all classes</option></select></label>
    <label>score &ge; <input id="score" type="range" min="0" max="1" step="0.01" value="0"> <span id="score-value">0.00</span></label>
    <label id="use-thresholds-label" hidden><input id="use-thresholds" type="checkbox" checked> per-class thresholds</label>
    <label><input id="show-empty" type="checkbox" checked> images with nothing shown</label>
    <span id="status"></span>
    <span class="meta">press <kbd>?</kbd> for keys</span>
  </div>
</header>
<main>
  <aside>
    <div class="panel" id="inspector"><h2>current image</h2><div class="iname" id="inspector-name"></div><ul id="inspector-list"></ul></div>
    <div class="panel" id="decisions-panel">
      <h2>decisions <span id="decision-count" class="meta"></span></h2>
      <input id="reviewer" type="text" placeholder="reviewer (optional)">
      <button id="download">Download decisions</button>
      <div id="save-status"></div>
    </div>
    <div class="panel">
      <h2>classes <span class="meta">(shown on this page / all rows)</span></h2>
      <table id="counts"><thead><tr><th>class</th><th class="n">page</th><th class="n">all</th></tr></thead><tbody></tbody></table>
    </div>
  </aside>
  <div id="grid"></div>
  <section id="full" hidden>
    <div id="full-bar"><button id="full-prev" title="previous image (k)">&#8249;</button><span id="full-name"></span><button id="full-next" title="next image (j)">&#8250;</button><a id="full-orig" target="_blank">original</a><button id="full-close" title="close (Esc)">close</button></div>
    <div id="full-stage-outer"><div id="full-stage"></div></div>
  </section>
</main>
<details id="problems" hidden><summary id="problems-summary"></summary><ul id="problems-list"></ul></details>
<div class="overlay" id="picker" hidden><div class="dialog"><h2>change class to&hellip;</h2>
  <input id="picker-filter" type="text" placeholder="type to filter; 1-9, 0 or Enter to pick; Esc to cancel"><ul id="picker-list"></ul></div></div>
<div class="overlay" id="help" hidden><div class="dialog"><h2>keys</h2><table>
  <tr><td><kbd>j</kbd> <kbd>&rarr;</kbd> / <kbd>k</kbd> <kbd>&larr;</kbd></td><td>next / previous image (across pages)</td></tr>
  <tr><td><kbd>n</kbd> <kbd>Tab</kbd> / <kbd>p</kbd> <kbd>Shift+Tab</kbd></td><td>next / previous instance</td></tr>
  <tr><td><kbd>a</kbd></td><td>accept the instance (then the next one)</td></tr>
  <tr><td><kbd>r</kbd></td><td>reject the instance (then the next one)</td></tr>
  <tr><td><kbd>c</kbd>, then <kbd>1</kbd>&ndash;<kbd>9</kbd> <kbd>0</kbd> or a name + <kbd>Enter</kbd></td><td>change the instance's class</td></tr>
  <tr><td><kbd>A</kbd></td><td>accept every undecided instance shown on the image</td></tr>
  <tr><td><kbd>u</kbd></td><td>undo the last decision</td></tr>
  <tr><td><kbd>f</kbd> <kbd>Enter</kbd> / <kbd>Esc</kbd></td><td>open / close the full view</td></tr>
  <tr><td><kbd>]</kbd> / <kbd>[</kbd></td><td>next / previous page</td></tr>
  <tr><td><kbd>?</kbd></td><td>this help</td></tr>
</table><p class="meta">Decisions stay in this browser (localStorage) until you download them (<b>Download decisions</b>: decisions.json).</p></div></div>
"""


def render_page(data: dict) -> str:
    """The page with the index ``data`` embedded (``</`` escaped so no string can close the script element)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    payload = payload.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    title = html.escape(str(data.get("title", "ntt-batch review")))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>{BODY}"
        f'<script type="application/json" id="review-data">{payload}</script>\n'
        f"<script>{JS}</script>\n</body>\n</html>\n"
    )
