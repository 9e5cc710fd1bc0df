"""The review page's CSS, inlined by :func:`.review_template.render_page`."""

CSS = r"""
  :root { --bg: #f4f4f5; --fg: #18181b; --muted: #71717a; --line: #d4d4d8; --accent: #2563eb;
          --acc: #16a34a; --rej: #dc2626; --rel: #9333ea; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--fg); }
  header { position: sticky; top: 0; z-index: 10; background: #fff; border-bottom: 1px solid var(--line); padding: 8px 16px; }
  h1 { font-size: 16px; margin: 0 0 4px; font-weight: 600; overflow-wrap: anywhere; }
  .meta { color: var(--muted); font-size: 12px; margin-bottom: 6px; }
  .controls { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center; }
  .controls label { display: inline-flex; gap: 6px; align-items: center; }
  #orders { display: inline-flex; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
  #orders button { border: 0; border-right: 1px solid var(--line); background: #fff; padding: 4px 10px; cursor: pointer; font: inherit; }
  #orders button:last-child { border-right: 0; }
  #orders button.on { background: var(--accent); color: #fff; }
  #orders button:disabled { color: #a1a1aa; cursor: default; }
  .pager button { font: inherit; padding: 3px 9px; cursor: pointer; }
  #page-info { font-variant-numeric: tabular-nums; }
  #score { width: 180px; }
  #score-value { font-variant-numeric: tabular-nums; min-width: 2.6em; display: inline-block; }
  #status { font-weight: 600; }
  main { display: flex; gap: 16px; padding: 16px; align-items: flex-start; }
  aside { flex: 0 0 290px; position: sticky; top: 110px; max-height: calc(100vh - 126px); overflow: auto;
          display: flex; flex-direction: column; gap: 10px; }
  .panel { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
  .panel h2 { font-size: 13px; margin: 2px 4px 6px; }
  table { border-collapse: collapse; width: 100%; font-size: 12px; }
  td, th { padding: 3px 4px; text-align: left; }
  th { color: var(--muted); font-weight: 500; }
  td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
  #counts tr[data-c] { cursor: pointer; }
  #counts tr[data-c]:hover { background: #f1f5f9; }
  #counts tr.selected { background: #dbeafe; }
  #counts tr.zero td { color: #a1a1aa; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
  #inspector .iname { font-weight: 600; overflow-wrap: anywhere; font-size: 12px; }
  #inspector ul { list-style: none; margin: 6px 0 0; padding: 0; }
  #inspector li { display: flex; gap: 4px; align-items: center; padding: 2px 4px; border-radius: 4px; cursor: pointer; font-size: 12px; }
  #inspector li.current { background: #dbeafe; }
  #inspector li .lbl { flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  #inspector li button { font-size: 11px; padding: 0 5px; cursor: pointer; }
  .badge { font-size: 11px; font-weight: 600; }
  .badge.acc { color: var(--acc); } .badge.rej { color: var(--rej); } .badge.rel { color: var(--rel); }
  #decisions-panel input { width: 100%; font: inherit; margin: 4px 0; }
  #download { width: 100%; font: inherit; padding: 5px; cursor: pointer; background: var(--accent); color: #fff; border: 0; border-radius: 4px; }
  #save-status { color: var(--muted); font-size: 11px; margin-top: 4px; }
  #grid { flex: 1; display: flex; flex-wrap: wrap; gap: 12px; align-content: flex-start; align-items: flex-start; }
  .tile { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px; cursor: pointer; }
  .tile.current { border-color: var(--accent); box-shadow: 0 0 0 3px var(--accent); }
  .tile.done figcaption .count { color: var(--acc); }
  .frame { position: relative; display: block; overflow: hidden; background: #e4e4e7; }
  .frame img { display: block; }
  .frame .note { padding: 10px; font-size: 12px; color: var(--rej); overflow-wrap: anywhere; }
  .inst { position: absolute; left: 0; top: 0; pointer-events: none; }
  .mask { position: absolute; background-repeat: no-repeat; }
  .box { position: absolute; border: 1px solid; }
  .inst.current .box { border-width: 2px; box-shadow: 0 0 0 2px #fff, 0 0 0 4px #000; }
  .inst.acc .box { border: 2px solid var(--acc) !important; }
  .inst.rej .box { border: 2px dashed var(--rej) !important; }
  .inst.rej .mask { opacity: 0.25; }
  .inst.rel .box { border: 2px dashed var(--rel) !important; }
  .tag { position: absolute; font-size: 10px; line-height: 12px; padding: 0 3px; white-space: nowrap; border-radius: 2px; transform: translateY(-100%); }
  .tag.inside { transform: none; }
  #full .tag { font-size: 13px; line-height: 16px; }
  figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; max-width: 100%; }
  figcaption .name { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: var(--fg); }
  figcaption .line { display: flex; gap: 8px; justify-content: space-between; align-items: center; }
  figcaption a, figcaption button.open-full { color: var(--accent); text-decoration: none; background: none; border: 0; padding: 0; font: inherit; cursor: pointer; }
  .uri { font-family: ui-monospace, monospace; font-size: 11px; }
  #full { flex: 1; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
  #full-bar { display: flex; gap: 10px; align-items: center; margin-bottom: 6px; }
  #full-name { font-weight: 600; flex: 1; overflow-wrap: anywhere; }
  #full-stage-outer { position: relative; overflow: hidden; }
  #full-stage { position: absolute; left: 0; top: 0; transform-origin: 0 0; }
  #full-stage img { display: block; }
  .overlay { position: fixed; inset: 0; background: rgba(0,0,0,.35); z-index: 50; display: flex; align-items: center; justify-content: center; }
  .dialog { background: #fff; border-radius: 8px; padding: 14px 18px; min-width: 320px; max-width: 640px; max-height: 80vh; overflow: auto; box-shadow: 0 10px 30px rgba(0,0,0,.3); }
  .dialog h2 { margin: 0 0 8px; font-size: 15px; }
  #picker-list { list-style: none; padding: 0; margin: 8px 0 0; }
  #picker-list li { padding: 3px 6px; border-radius: 4px; cursor: pointer; }
  #picker-list li.hl { background: #dbeafe; }
  #picker-list .num { display: inline-block; width: 1.6em; color: var(--muted); font-variant-numeric: tabular-nums; }
  #picker-filter { width: 100%; font: inherit; padding: 4px; }
  kbd { font: 12px ui-monospace, monospace; border: 1px solid var(--line); border-bottom-width: 2px; border-radius: 3px; padding: 0 4px; background: #fafafa; }
  #help td { padding: 2px 8px 2px 0; font-size: 13px; }
  details { margin: 0 16px 16px; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
  details li { overflow-wrap: anywhere; }
  .empty-note { color: var(--muted); padding: 24px; }
  [hidden] { display: none !important; }
"""
