"""The status page: one static HTML document that reads /api/status every 2 s."""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Edge Stream</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#f6f7f9}
 h1{font-size:1.3rem;margin:0 0 .2rem} h2{font-size:1rem;margin:1.4rem 0 .4rem}
 table{border-collapse:collapse;width:100%;background:#fff}
 th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e6ea}
 th{background:#eef0f3;font-weight:600} .muted{color:#6a737d}
 .ok{color:#137333} .warn{color:#b06000} .bad{color:#c5221f}
</style></head><body>
<h1>Edge Stream <span id="gw" class="muted"></span></h1>
<div id="summary" class="muted">loading...</div>
<div id="alert" class="bad"></div>
<h2>Sources</h2><table id="sources"></table>
<h2>Sinks</h2><table id="sinks"></table>
<h2>Routes</h2><table id="routes"></table>
<h2>Recent dead letters</h2><table id="dead"></table>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const cls = s => s === "running" ? "ok" : (s === "failed" ? "bad" : "warn");
function table(id, head, rows) {
  document.getElementById(id).innerHTML = "<tr>" + head.map(h => "<th>" + h + "</th>").join("") +
    "</tr>" + (rows.length ? rows.join("") : "<tr><td class=muted colspan=9>none</td></tr>");
}
async function refresh() {
  try {
    const s = await (await fetch("api/status")).json();
    document.getElementById("gw").textContent = s.gateway.id;
    const st = s.store;
    document.getElementById("summary").textContent =
      `up ${Math.round(s.gateway.uptime_s)} s - ${s.gateway.ingested} ingested - store ` +
      `${(st.bytes/1048576).toFixed(1)} of ${(st.max_bytes/1048576).toFixed(0)} MiB` +
      (st.blocked ? " (BLOCKED: buffer full)" : "") + ` - ${st.dropped} dropped - ` +
      `${s.dead_letters} dead letters` + (s.broker ? ` - MQTT broker ${s.broker.url}` +
      (s.broker.embedded ? " (embedded)" : "") : "");
    const mib = n => (n/1048576).toFixed(1);
    document.getElementById("alert").textContent = st.disk && st.disk.full ?
      `DISK FULL: ${mib(st.disk.free_bytes)} MiB free under the data_dir, store ` +
      `${mib(st.disk.store_bytes)} MiB (store.db and WAL)` +
      (st.disk.reserve ? "" : ", reserve given up") +
      ". Intake is paused; sinks keep delivering and purging. Free some space." : "";
    table("sources", ["name", "state", "produced", "dropped", "errors", "last error"],
      Object.entries(s.sources).map(([n, r]) => `<tr><td>${esc(n)}</td><td class=${cls(r.state)}>` +
        `${esc(r.state)}</td><td>${r.produced}</td><td class=${r.dropped ? "warn" : ""}>` +
        `${r.dropped ?? 0}</td><td>${r.errors}</td><td>${esc(r.last_error)}</td></tr>`));
    table("sinks", ["name", "type", "state", "waiting", "delivered", "dead-lettered", "last error"],
      Object.entries(s.sinks).map(([n, r]) => `<tr><td>${esc(n)}</td><td>${esc(r.type)}</td>` +
        `<td class=${cls(r.state)}>${esc(r.state)}</td><td>${r.depth}</td><td>${r.delivered}</td>` +
        `<td>${r.dead_lettered}</td><td>${esc(r.last_error)}</td></tr>`));
    table("routes", ["name", "match", "processors", "sinks"],
      Object.entries(s.routes).map(([n, r]) => `<tr><td>${esc(n)}</td><td>${esc(r.match.join(", "))}` +
        `</td><td>${esc(r.processors.join("; "))}</td><td>${esc(r.sinks.join(", "))}</td></tr>`));
    const dead = await (await fetch("api/dead-letters?limit=10")).json();
    table("dead", ["id", "topic", "where", "reason"], dead.map(d => `<tr><td>${esc(d.id)}</td>` +
      `<td>${esc(d.topic)}</td><td>${esc(d.origin)}</td><td>${esc(d.reason)}</td></tr>`));
  } catch (e) {
    document.getElementById("summary").textContent = "cannot reach the gateway: " + e;
  }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
