// The status page: renders /api/status as it arrives over Server-Sent Events
// (/api/events); the dead letters are read again when their number changes.
// Everything from outside (names, topics, errors) is escaped before it is shown.
"use strict";
const esc = s => String(s ?? "").replace(/[&<>"']/g, c =>
  ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const cls = s => s === "running" ? "ok" : (s === "failed" ? "bad" : "warn");
const num = n => Number(n) || 0;
const byId = id => document.getElementById(id);
let deadCount = -1;
let csrf = "";

function table(id, head, rows) {
  byId(id).innerHTML = "<tr>" + head.map(h => "<th>" + esc(h) + "</th>").join("") +
    "</tr>" + (rows.length ? rows.join("") : "<tr><td class=muted colspan=9>none</td></tr>");
}

async function showDead(count) {
  if (count === deadCount) return;
  deadCount = count;
  const answer = await fetch("api/dead-letters?limit=10", {credentials: "same-origin"});
  const dead = await answer.json();
  table("dead", ["id", "topic", "where", "reason"], dead.map(d => `<tr><td>${esc(d.id)}</td>` +
    `<td>${esc(d.topic)}</td><td>${esc(d.origin)}</td><td>${esc(d.reason)}</td></tr>`));
}

async function render(s) {
  byId("gw").textContent = s.gateway.id;
  const st = s.store;
  const mib = n => (num(n) / 1048576).toFixed(1);
  byId("summary").textContent =
    `up ${Math.round(num(s.gateway.uptime_s))} s - ${num(s.gateway.ingested)} ingested - store ` +
    `${mib(st.bytes)} of ${(num(st.max_bytes) / 1048576).toFixed(0)} MiB` +
    (st.blocked ? " (BLOCKED: buffer full)" : "") + ` - ${num(st.dropped)} dropped - ` +
    `${num(s.dead_letters)} dead letters` + (s.broker ? ` - MQTT broker ${s.broker.url}` +
    (s.broker.embedded ? " (embedded)" : "") : "");
  byId("alert").textContent = st.disk && st.disk.full ?
    `DISK FULL: ${mib(st.disk.free_bytes)} MiB free under the data_dir, store ` +
    `${mib(st.disk.store_bytes)} MiB (store.db and WAL)` +
    (st.disk.reserve ? "" : ", reserve given up") +
    ". Intake is paused; sinks keep delivering and purging. Free some space." : "";
  table("sources", ["name", "state", "produced", "dropped", "errors", "last error"],
    Object.entries(s.sources).map(([n, r]) => `<tr><td>${esc(n)}</td><td class=${cls(r.state)}>` +
      `${esc(r.state)}</td><td>${num(r.produced)}</td><td class=${r.dropped ? "warn" : ""}>` +
      `${num(r.dropped)}</td><td>${num(r.errors)}</td><td>${esc(r.last_error)}</td></tr>`));
  table("sinks", ["name", "type", "state", "waiting", "delivered", "dead-lettered", "last error"],
    Object.entries(s.sinks).map(([n, r]) => `<tr><td>${esc(n)}</td><td>${esc(r.type)}</td>` +
      `<td class=${cls(r.state)}>${esc(r.state)}</td><td>${num(r.depth)}</td>` +
      `<td>${num(r.delivered)}</td><td>${num(r.dead_lettered)}</td>` +
      `<td>${esc(r.last_error)}</td></tr>`));
  table("routes", ["name", "match", "processors", "sinks"],
    Object.entries(s.routes).map(([n, r]) => `<tr><td>${esc(n)}</td><td>${esc(r.match.join(", "))}` +
      `</td><td>${esc(r.processors.join("; "))}</td><td>${esc(r.sinks.join(", "))}</td></tr>`));
  await showDead(num(s.dead_letters));
}

async function whoAmI() {
  const answer = await fetch("api/session", {credentials: "same-origin"});
  if (answer.status === 401) { location.href = "login"; return; }
  const me = await answer.json();
  csrf = me.csrf || "";
  if (me.auth !== "open") byId("who").textContent = `${me.user} (${me.role})`;
  byId("logout").hidden = me.auth !== "session";
}

function start() {
  byId("logout").addEventListener("click", async () => {
    await fetch("logout", {method: "POST", headers: {"X-CSRF-Token": csrf},
      credentials: "same-origin"});
    location.href = "login";
  });
  whoAmI().catch(() => {});
  const events = new EventSource("api/events");
  events.onmessage = event => {
    render(JSON.parse(event.data)).catch(e => {
      byId("summary").textContent = "cannot show the status: " + e;
    });
  };
  events.onerror = () => {
    byId("summary").textContent = "cannot reach the gateway; trying again...";
    whoAmI().catch(() => {});
  };
}

start();
