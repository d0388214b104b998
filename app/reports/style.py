"""Inline stylesheet for the report page. System font stacks only: a web font would be a
network request, and the page must render identically offline and under a strict CSP.
"""

CSS = """
:root { --fg:#1d2330; --muted:#5d6676; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff; --accent:#0072B2;
  --good:#1a7f37; --bad:#b42318; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.5 -apple-system, BlinkMacSystemFont,
  "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width:1160px; margin:0 auto; padding:28px 28px 60px; }
h1 { font-size:24px; margin:0 0 4px; letter-spacing:-0.01em; }
h2 { font-size:18px; margin:34px 0 12px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:20px 0 8px; }
h4 { font-size:12px; margin:0 0 6px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
.mono, code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size:12.5px; }
.muted { color:var(--muted); }
header .meta { color:var(--muted); display:flex; flex-wrap:wrap; gap:4px 18px; }
header .params { margin-top:6px; }
nav.toc { margin:14px 0 0; display:flex; flex-wrap:wrap; gap:6px; }
nav.toc a { color:var(--accent); text-decoration:none; padding:2px 10px; border:1px solid var(--line);
  border-radius:999px; background:#fff; font-size:13px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px 18px; }
.badges { display:flex; flex-wrap:wrap; gap:8px; align-items:center; }
.tech { font-weight:650; font-size:16px; margin-right:4px; }
.badge, .pill { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12.5px; border:1px solid var(--line);
  background:#f1f3f6; color:var(--muted); white-space:nowrap; }
.badge.good { background:#e8f5ec; color:var(--good); border-color:#b7dfc3; }
.badge.bad { background:#fdecea; color:var(--bad); border-color:#f5c2bd; }
.badge.warn { background:#fff5d6; color:var(--warn); border-color:#f0d98a; }
.pill.st-succeeded { background:#e8f5ec; color:var(--good); } .pill.st-failed { background:#fdecea; color:var(--bad); }
.pill.st-running, .pill.st-queued { background:#e7f0fb; color:var(--accent); }
.verdict { margin:12px 0 4px; font-size:14.5px; max-width:90ch; }
.tiles { display:grid; grid-template-columns:repeat(auto-fill, minmax(210px, 1fr)); gap:10px; margin-top:12px; }
.tile { border:1px solid var(--line); border-radius:8px; padding:10px 12px; background:#fbfcfd; }
.tile .lbl { font-size:12.5px; color:var(--muted); }
.tile .val { font-size:19px; font-weight:650; margin-top:2px; font-variant-numeric:tabular-nums; }
.tile .sub, .node .sub { font-size:12.5px; color:var(--muted); }
.rec { margin-top:12px; padding:10px 12px; border-radius:8px; border-left:4px solid var(--good); background:#f1f8f3; }
.rec.none { border-left-color:var(--warn); background:#fffaeb; }
ul.notes { margin:12px 0 0; padding-left:20px; color:var(--muted); max-width:100ch; }
.alert { margin-top:14px; padding:10px 14px; border-radius:8px; background:#fdecea; border:1px solid #f5c2bd; }
.figs { display:grid; grid-template-columns:repeat(auto-fit, minmax(460px, 1fr)); gap:14px; }
.fig { margin:0; background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 12px 10px; }
.fig figcaption { font-size:12.5px; color:var(--muted); margin-top:4px; padding:0 4px; }
svg.chart { width:100%; height:auto; display:block; font-family:inherit; }
svg .plot { fill:#fff; stroke:#c9ced6; }
svg .grid { stroke:#edf0f3; }
svg .tk { font-size:11px; fill:#5d6676; font-variant-numeric:tabular-nums; }
svg .ax { font-size:12px; fill:#1d2330; font-weight:600; }
svg .lg { font-size:11.5px; fill:#1d2330; }
svg .pl { font-size:11px; fill:#1d2330; paint-order:stroke; stroke:#fff; stroke-width:3px; }
svg .rl { font-size:11px; fill:#b42318; font-weight:600; paint-order:stroke; stroke:#fff; stroke-width:3px; }
svg .out { fill:#b42318; opacity:.05; }
svg .ref { stroke:#b42318; stroke-width:1.5; stroke-dasharray:6 4; }
svg .front { fill:none; stroke:#1d2330; stroke-width:1.5; stroke-dasharray:5 3; }
svg .hl { fill:none; stroke:#1d2330; stroke-width:2; }
svg .muted { font-size:12px; fill:#5d6676; }
.note { font-size:13px; color:var(--warn); background:#fffaeb; border:1px solid #f0d98a; border-radius:6px; padding:6px 10px; }
.scroll { overflow-x:auto; border:1px solid var(--line); border-radius:8px; background:#fff; margin:8px 0; }
table.data { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; font-size:13px; }
table.data th { text-align:left; font-weight:600; color:var(--muted); background:#f8f9fb; position:sticky; top:0; }
table.data th, table.data td { padding:5px 10px; border-bottom:1px solid var(--line); white-space:nowrap; }
table.data tbody tr:nth-child(even) { background:#fafbfc; }
table.kv { border-collapse:collapse; font-size:13px; }
table.kv th { text-align:left; font-weight:500; color:var(--muted); padding:3px 16px 3px 0; vertical-align:top;
  white-space:nowrap; }
table.kv td { padding:3px 0; word-break:break-word; }
.cfg.env { max-width:680px; }
.card .scroll { margin-top:14px; }
.cfgs { display:grid; grid-template-columns:repeat(auto-fill, minmax(320px, 1fr)); gap:10px; }
.cfg { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px; overflow:hidden; }
.good { color:var(--good); } .bad { color:var(--bad); }
.chain { display:flex; flex-wrap:wrap; align-items:center; gap:8px; margin:8px 0; }
.node { background:#fff; border:1px solid var(--line); border-radius:8px; padding:8px 12px; min-width:150px; }
.node.cur { border-color:var(--accent); box-shadow:0 0 0 2px #d6e6f5; }
.node .name { font-weight:600; } .node .via { font-size:12px; color:var(--accent); }
.arrow { color:var(--muted); font-size:18px; }
.tree ul { margin:2px 0; padding-left:20px; }
section.step { margin-top:22px; padding:4px 18px 18px; border:1px solid var(--line); border-radius:12px; background:#fcfcfd; }
section.step h2 { margin-top:16px; }
details.raw { background:#fff; border:1px solid var(--line); border-radius:8px; padding:8px 12px; }
details.raw summary { cursor:pointer; font-weight:600; }
details.raw pre { max-height:600px; overflow:auto; margin:10px 0 0; }
footer { margin-top:40px; color:var(--muted); font-size:12.5px; }
"""
