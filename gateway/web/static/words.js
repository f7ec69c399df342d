// The console's words: pure functions from the /api/status document (and other answers)
// to the sentences and numbers the pages show. No DOM here, so that Node.js can run them
// in the tests (tests/web/test_console_words.py).
"use strict";
const Words = (() => {
  const num = n => Number(n) || 0;

  /** "3 s", "12 min", "2 h 5 min", "3 d" for a number of seconds. */
  function ago(seconds) {
    const s = Math.max(0, Math.round(num(seconds)));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) {
      const m = Math.floor((s % 3600) / 60);
      return `${Math.floor(s / 3600)} h` + (m ? ` ${m} min` : "");
    }
    return `${Math.floor(s / 86400)} d`;
  }

  function bytes(n) {
    const b = num(n);
    if (b < 1024) return `${b} B`;
    if (b < 1048576) return `${(b / 1024).toFixed(1)} KiB`;
    if (b < 1073741824) return `${(b / 1048576).toFixed(1)} MiB`;
    return `${(b / 1073741824).toFixed(2)} GiB`;
  }

  function rate(perSecond) {
    const r = num(perSecond);
    if (r === 0) return "0/s";
    return r >= 10 ? `${Math.round(r)}/s` : `${r.toFixed(1)}/s`;
  }

  /** A UTC time (unix seconds) as "2024-05-01 12:03:04 UTC". */
  function when(unixSeconds) {
    if (unixSeconds === null || unixSeconds === undefined) return "";
    return new Date(num(unixSeconds) * 1000).toISOString().replace("T", " ").slice(0, 19) +
      " UTC";
  }

  /** Hex of a hex string, spaced in bytes and lines of 16 for reading. */
  function hexLines(hex) {
    const pairs = String(hex).match(/.{1,2}/g) || [];
    const lines = [];
    for (let i = 0; i < pairs.length; i += 16) {
      lines.push(i.toString(16).padStart(6, "0") + "  " + pairs.slice(i, i + 16).join(" "));
    }
    return lines.join("\n");
  }

  /** Does MQTT filter `filter` match `topic`? */
  function matches(filter, topic) {
    const f = String(filter).split("/");
    const t = String(topic).split("/");
    for (let i = 0; i < f.length; i++) {
      if (f[i] === "#") return !(i === 0 && t[0].startsWith("$"));
      if (i >= t.length) return false;
      if (f[i] === "+") { if (i === 0 && t[0].startsWith("$")) return false; continue; }
      if (f[i] !== t[i]) return false;
    }
    return f.length === t.length;
  }

  /** Could some topic match both filters? (Which sources feed which routes.) */
  function overlap(a, b) {
    const x = String(a).split("/");
    const y = String(b).split("/");
    for (let i = 0; i < Math.max(x.length, y.length); i++) {
      if (x[i] === "#" || y[i] === "#") return true;
      if (x[i] === undefined || y[i] === undefined) return false;
      if (x[i] !== "+" && y[i] !== "+" && x[i] !== y[i]) return false;
    }
    return true;
  }

  /** The disk-full banner, or "" when the disk is fine. */
  function diskBanner(s) {
    const disk = s.store && s.store.disk;
    if (!disk || !disk.full) return "";
    const mib = n => (num(n) / 1048576).toFixed(1);
    return `DISK FULL: ${mib(disk.free_bytes)} MiB free under the data_dir, store ` +
      `${mib(disk.store_bytes)} MiB (store.db and WAL)` +
      (disk.reserve ? "" : ", reserve given up") +
      ". Intake is paused; sinks keep delivering and purging. Free some space.";
  }

  const BEHIND = 60; // seconds of backlog age before a sink counts as behind

  /** The one-line health verdict: "All flowing", or what is wrong, worst first. */
  function verdict(s) {
    const problems = [];
    const disk = s.store && s.store.disk;
    if (disk && disk.full) problems.push("Disk full: intake is paused");
    else if (s.store && s.store.blocked) problems.push("Store full: intake is paused");
    for (const [name, src] of Object.entries(s.sources || {})) {
      if (src.state === "failed") problems.push(`${name} failed`);
      else if (src.state !== "running") problems.push(`${name} ${src.state || "offline"}`);
      for (const [dev, d] of Object.entries(src.devices || {})) {
        if (d.state === "offline") problems.push(`${dev} offline`);
      }
      if (src.serial && src.serial.state && src.serial.state !== "open") {
        problems.push(`${name}'s port ${src.serial.state}`);
      }
    }
    for (const [name, sink] of Object.entries(s.sinks || {})) {
      if (sink.state === "failed") problems.push(`${name} failed`);
      else if (num(sink.oldest_age_s) >= BEHIND) {
        problems.push(`${name} is ${ago(sink.oldest_age_s)} behind`);
      } else if (sink.state !== "running") problems.push(`${name} ${sink.state}`);
    }
    const active = (s.alerts && s.alerts.active) || [];
    if (!problems.length && active.length) {
      problems.push(`${active.length} alert${active.length > 1 ? "s" : ""} active`);
    }
    return problems.length ? problems.join("; ") : "All flowing";
  }

  /** "healthy" | "problem" for the verdict's style (the words carry the meaning). */
  const stateClass = state =>
    ["running", "online", "open", "applied", "resolved"].includes(state) ? "ok" :
      (["failed", "offline", "refused", "firing", "missing", "lost"].includes(state) ?
        "bad" : "warn");

  /** The last reload's change, as [label, value]: "Not applied" only when the gateway
   * did not apply it (refused, rolled_back), "Applying..." while it is being applied. */
  function reloadChange(r) {
    if (!r) return ["What changed", ""];
    const changes = (r.changes || []).join("; ");
    if (r.outcome === "applying") return ["Applying...", changes];
    if (r.outcome === "refused" || r.outcome === "rolled_back") return ["Not applied", changes];
    return ["What changed", changes];
  }

  /** What the History table says when it lists no version: why, when the gateway
   * answered an error (the list is not empty then: it could not be read). */
  function historyNote(answer) {
    if (!answer) return "History cannot be listed: no answer from the gateway";
    if (!answer.ok) {
      const errors = (answer.data && answer.data.errors) || [];
      return "History cannot be listed: " + (errors.length ? errors.join("; ") :
        `HTTP ${answer.status}`);
    }
    return "no kept versions yet: each edit keeps the text it replaced";
  }

  /** A kept version's hash, marked when it is the text the gateway runs (its hash is
   * status.config.hash): rolling back to an older one goes a step further back. */
  const versionHash = (v, running) => v.hash + (running && v.hash === running ?
    " (running now)" : "");

  /** Why the route editor cannot edit: the gateway has no config file, or the file
   * does not load (edited by hand); `errors` from GET /api/config. */
  function editorLocked(errors, noFile) {
    if (noFile) {
      return "The gateway was started without a config file (-c FILE), so there is no" +
        " file to edit here. Start it with -c FILE to edit its routes from this page.";
    }
    return `The config file does not load, so it cannot be edited here: ${errors.join("; ")}.` +
      " The gateway runs on as it was. Correct the file, or roll back to a version under" +
      " History. What you typed in the form stays.";
  }

  return {ago, bytes, rate, when, hexLines, matches, overlap, diskBanner, verdict, stateClass,
    reloadChange, historyNote, versionHash, editorLocked};
})();
if (typeof module !== "undefined") module.exports = Words;
