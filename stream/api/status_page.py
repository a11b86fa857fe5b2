"""The status page served at ``/``: plain HTML and a little JavaScript, no build step.

It polls ``/v1/status`` every two seconds and shows the serving and staged versions, the
rollout's backfill, events/s and freshness over the last minutes (as small SVG charts) and
the dead-letter count. With ``EMBSTREAM_API_TOKEN`` set, open it as ``/#token=<token>``: the
page itself carries no data, and sends the token with its ``/v1/status`` requests.
"""

from __future__ import annotations

__all__ = ["STATUS_PAGE"]

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>embstream status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; max-width: 60rem; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .8rem; }
  .card { border: 1px solid #ddd; border-radius: 6px; padding: .7rem .9rem; }
  .label { color: #666; font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
  .value { font-size: 1.5rem; font-variant-numeric: tabular-nums; }
  svg { width: 100%; height: 60px; background: #fafafa; border-radius: 4px; }
  polyline { fill: none; stroke-width: 1.5; }
  #error { color: #b00; }
  table { border-collapse: collapse; margin-top: .5rem; }
  td, th { padding: .2rem .8rem .2rem 0; text-align: left; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>embstream <span id="state" class="label">loading…</span></h1>
<p id="error"></p>
<div class="cards">
  <div class="card"><div class="label">serving version</div><div class="value" id="serving">–</div></div>
  <div class="card"><div class="label">staged version</div><div class="value" id="staged">–</div></div>
  <div class="card"><div class="label">events/s</div><div class="value" id="rate">–</div>
    <svg viewBox="0 0 300 60" preserveAspectRatio="none"><polyline id="rate-line" stroke="#2a6"/></svg></div>
  <div class="card"><div class="label">freshness p50 / p99 ms</div><div class="value" id="freshness">–</div>
    <svg viewBox="0 0 300 60" preserveAspectRatio="none"><polyline id="p99-line" stroke="#d62"/></svg></div>
  <div class="card"><div class="label">dead letters</div><div class="value" id="dlq">–</div></div>
  <div class="card"><div class="label">events consumed</div><div class="value" id="consumed">–</div></div>
</div>
<h2 class="label">rollout</h2>
<table><tbody id="rollout"><tr><td>no rollout in progress</td></tr></tbody></table>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const show = (id, text) => { document.getElementById(id).textContent = text; };
const number = (x) => x === null || x === undefined ? "–" : Number(x).toLocaleString("en");

function line(id, values) {
  const points = values.filter((v) => v !== null);
  const top = Math.max(1, ...points);
  const step = 300 / Math.max(1, values.length - 1);
  document.getElementById(id).setAttribute("points", values
    .map((v, i) => v === null ? null : `${(i * step).toFixed(1)},${(58 - 56 * v / top).toFixed(1)}`)
    .filter((p) => p !== null).join(" "));
}

async function refresh() {
  try {
    const response = await fetch("/v1/status", {headers});
    if (!response.ok) throw new Error(`/v1/status answered ${response.status}`);
    const s = await response.json();
    show("serving", s.serving_version === null ? "–" : "v" + s.serving_version);
    show("staged", s.staged_version === null ? "none" : "v" + s.staged_version);
    show("rate", number(Math.round(s.events_per_second)));
    show("freshness", `${number(s.freshness_ms.p50)} / ${number(s.freshness_ms.p99)}`);
    show("dlq", number(s.dead_letters));
    show("consumed", number(s.events_consumed));
    line("rate-line", s.history.map((row) => row.events_per_second));
    line("p99-line", s.history.map((row) => row.freshness_p99_ms));
    const rows = [];
    for (const [kind, p] of Object.entries((s.rollout && s.rollout.backfill) || {})) {
      const share = p.total ? Math.min(100, 100 * p.done / p.total) : 100;
      rows.push(`<tr><th>${kind}</th><td>${number(p.done)} / ${number(p.total)}</td>` +
                `<td>${share.toFixed(1)} %</td><td>${p.complete ? "complete" : "running"}</td></tr>`);
    }
    const idle = "<tr><td>no rollout in progress</td></tr>";
    document.getElementById("rollout").innerHTML = rows.join("") || idle;
    show("state", "live · updated " + new Date().toLocaleTimeString());
    show("error", "");
  } catch (error) {
    show("error", String(error));
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
