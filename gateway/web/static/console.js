// The console: one page, a view per hash (#overview, #pipeline, #topics, #editor, #sinks,
// #devices, #dead, #alerts). The /api/status document arrives over Server-Sent Events and
// updates the numbers in place; the other answers are read when their page is open.
// Everything from outside (names, topics, payloads, errors) is set as text (textContent,
// never innerHTML), binary payloads as hex. A hidden tab closes its stream and polls
// nothing. Words (verdict, ages, sizes) come from words.js.
"use strict";
(() => {
  const W = Words;
  const $ = id => document.getElementById(id);
  const num = n => Number(n) || 0;
  const SVG = "http://www.w3.org/2000/svg";
  const PAGES = ["overview", "pipeline", "topics", "editor", "sinks", "devices", "dead", "alerts"];
  const PROCESSOR_TYPES = ["json", "transform", "filter"];
  const SECONDARY_EDIT = {class: "secondary", edit: true};

  let me = {user: "", role: "viewer", auth: "open"};
  let status = null; // the newest /api/status document
  let lostAt = null; // when the stream stopped answering (ms), null while it is live
  let previous = null; // the one before, with the time it came: for rates
  let rates = {source: {}, sink: {}, route: {}, emitted: {}};
  let config = null; // GET /api/config: the effective config, secrets ***
  let configHash = null;
  let configErrors = []; // why GET /api/config was refused: the file does not load
  let noConfigFile = false; // the gateway was started without -c FILE: nothing to edit
  // the kept versions, and what History says when it lists none (why, on an error)
  let versions = {list: [], note: "listing the kept versions..."};
  let page = "overview";
  let selected = null; // the pipeline's chosen node: {kind, name}
  let events = null;
  let timer = null; // the open page's polling (topics, devices)
  let deadCount = -1;
  let deadAt = 0;
  let pending = null; // the checked edit Apply sends: {method, name, body, key}

  // -- building DOM: text only ------------------------------------------------------

  // Bidi controls in outside text (a topic holding U+202E RIGHT-TO-LEFT OVERRIDE) turned
  // the rest of its line around: "plant/\u202Eexe.gnp" read "plant/png.exe", and the
  // words after a topic ("goes to: lines") read backwards. They are shown as "<U+202E>",
  // in every text and tooltip of the page, by one observer rather than at each use.
  const BIDI = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/;
  const BIDI_ALL = new RegExp(BIDI.source, "g");
  const visible = s => String(s ?? "").replace(BIDI_ALL, c =>
    `<U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}>`);
  const SHOWN_ATTRS = ["title", "aria-label"];
  // Only what the page shows: the text of a textarea (a processor's settings, set as
  // its text) is its value, and of an option too: rewritten there, Apply wrote
  // "<U+200F>" for the RLM of a Hebrew setting, and Check's diff showed no change.
  const EDITABLE = "textarea, input, select, option, [contenteditable]";
  const editable = node => {
    const at = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
    return !!at && (!!at.closest(EDITABLE) || at.isContentEditable);
  };

  function unbidiOne(node) {
    if (node.nodeType === Node.TEXT_NODE) {
      if (BIDI.test(node.data) && !editable(node)) node.data = visible(node.data);
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      for (const name of SHOWN_ATTRS) {
        const v = node.getAttribute(name);
        if (v && BIDI.test(v)) node.setAttribute(name, visible(v));
      }
    }
  }

  /** `node` and all in it. */
  function unbidi(node) {
    unbidiOne(node);
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    const walk = document.createTreeWalker(node, NodeFilter.SHOW_TEXT | NodeFilter.SHOW_ELEMENT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) unbidiOne(n);
  }

  new MutationObserver(records => {
    for (const r of records) {
      if (r.type === "childList") r.addedNodes.forEach(unbidi);
      else unbidiOne(r.target);
    }
  }).observe(document.body, {childList: true, characterData: true, subtree: true,
    attributes: true, attributeFilter: SHOWN_ATTRS});

  /** An element; `props`: class, text, attrs {name: value}, on {event: fn}; children are
   * nodes or strings (text nodes). */
  function el(tag, props, ...kids) {
    const node = document.createElement(tag);
    props = props || {};
    if (props.class) node.className = props.class;
    if (props.text !== undefined) node.textContent = String(props.text);
    for (const [k, v] of Object.entries(props.attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const [k, fn] of Object.entries(props.on || {})) node.addEventListener(k, fn);
    for (const kid of kids) {
      if (kid !== null && kid !== undefined) {
        node.append(typeof kid === "string" ? document.createTextNode(kid) : kid);
      }
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  const button = (label, fn, opts) => {
    opts = opts || {};
    // a row's button names its row ("Edit route lines"): a screen reader's list of the
    // page's buttons read "Edit, Edit, Edit"
    const b = el("button", {text: label, class: opts.class,
      attrs: {type: "button", "aria-label": opts.name}, on: {click: fn}});
    if (opts.edit) guard(b);
    return b;
  };

  /** An editing control: disabled, with the reason, for a viewer. */
  function guard(control) {
    control.dataset.edit = "1";
    if (me.role !== "operator") {
      control.disabled = true;
      control.title = "Needs an operator: you are signed in as a viewer";
    }
    return control;
  }

  function guardAll() {
    for (const c of document.querySelectorAll("[data-edit]")) guard(c);
    for (const n of document.querySelectorAll(".viewer-note")) n.hidden = me.role === "operator";
  }

  function state(word) {
    return el("span", {class: "state " + W.stateClass(word), text: word || "unknown"});
  }

  /** Rows of `tbody` kept by key: a row is made once and its cells' text updated in place,
   * so that nothing jumps and a focused button stays. A cell: a string, {text, cls}, or a
   * function making a node (called once, when the row is made). */
  function syncRows(tbody, items, empty) {
    const rows = tbody._rows || (tbody._rows = new Map());
    const seen = new Set();
    let at = 0;
    for (const [key, cells] of items) {
      seen.add(key);
      let tr = rows.get(key);
      if (!tr) {
        tr = el("tr", {attrs: {"data-key": key}});
        for (const c of cells) {
          const td = el("td");
          if (typeof c === "function") td.append(c());
          tr.append(td);
        }
        rows.set(key, tr);
      }
      cells.forEach((c, i) => {
        if (typeof c === "function") return;
        const td = tr.children[i];
        const text = c !== null && typeof c === "object" ? c.text : c;
        const cls = c !== null && typeof c === "object" ? (c.cls || "") : "";
        if (td.textContent !== visible(text)) td.textContent = String(text ?? "");
        if (td.className !== cls) td.className = cls;
        if (c && c.title !== undefined) td.title = c.title;
      });
      if (tbody.children[at] !== tr) tbody.insertBefore(tr, tbody.children[at] || null);
      at++;
    }
    for (const [key, tr] of rows) {
      if (!seen.has(key)) { tr.remove(); rows.delete(key); }
    }
    let none = tbody.querySelector("tr.none");
    if (!items.length && !none) {
      const cols = tbody.parentElement.querySelectorAll("th").length || 1;
      none = el("tr", {class: "none"}, el("td", {class: "muted", text: empty || "none",
        attrs: {colspan: cols}}));
      tbody.append(none);
    } else if (items.length && none) none.remove();
    else if (none && none.textContent !== (empty || "none")) none.firstChild.textContent = empty || "none";
  }

  // -- talking to the gateway -------------------------------------------------------

  /** The login page, which comes back to this page (#dead, #editor?route=x) after it. */
  const toLogin = () => { saveDraft(); location.href = "login" + location.hash; };

  // The route being typed when the session ended (2 idle hours, a gateway restart, a
  // logout in another tab) was lost with the page: it is kept in the tab's
  // sessionStorage and put back in the form after the login, for the same user only
  // (another one logging in next in this tab got it), once, on the editor the login
  // came back to or opened without a route or topic asked for. Logout drops it.
  const DRAFT = "edge-stream route draft";
  let filledWith = null; // the form as fillForm left it: nothing typed since
  let draft = null; // the kept one, taken from the storage once this user is known

  /** The form as typed, raw (settings as written, perhaps not JSON yet). */
  const formText = () => JSON.stringify({
    name: $("route-name").value, isNew: !$("route-name").readOnly,
    match: $("route-match").value,
    processors: [...$("processors").children].map(li => [li.querySelector(".ptype").value,
      li.querySelector(".psettings").value]),
    sinks: [...$("route-sinks").querySelectorAll("input:checked")].map(i => i.value),
  });

  function saveDraft() {
    const typed = formText();
    if (!me.user || typed === filledWith || formEmpty()) return;
    try {
      sessionStorage.setItem(DRAFT, JSON.stringify({user: me.user, hash: location.hash,
        form: JSON.parse(typed)}));
    } catch (e) { /* storage off: as before */ }
  }

  const dropDraft = () => {
    draft = null;
    try { sessionStorage.removeItem(DRAFT); } catch (e) { /* storage off: none kept */ }
  };

  /** The draft kept at the logout, if this user's (gone from the storage either way). */
  function takeDraft() {
    let kept = null;
    try { kept = JSON.parse(sessionStorage.getItem(DRAFT) || "null"); } catch (e) { /* none */ }
    dropDraft();
    if (kept && typeof kept === "object" && me.user && kept.user === me.user &&
        kept.form && typeof kept.form === "object") draft = kept;
  }

  /** The draft taken at the login, back in the form: on the first open of the editor,
   * unless it was asked for another route or topic (Edit, Route this topic). */
  function restoreDraft(topic, route) {
    const kept = draft;
    draft = null;
    if (!kept || ((topic || route) && location.hash !== kept.hash)) return false;
    const form = kept.form;
    fillForm(String(form.name ?? ""), {match: [], processors: [],
      sinks: Array.isArray(form.sinks) ? form.sinks : []}, !!form.isNew);
    $("route-match").value = String(form.match ?? "");
    for (const [type, settings] of Array.isArray(form.processors) ? form.processors : []) {
      addProcessor({type: String(type ?? "")});
      const li = $("processors").lastChild;
      li.querySelector(".psettings").value = String(settings ?? "{}");
    }
    filledWith = null;
    // said after what openEditor said already (the config file does not load ...)
    const out = $("route-outcome");
    if (!out.textContent) out.className = "warn";
    out.textContent = (out.textContent ? out.textContent + " " : "") + "The route you were" +
      " typing when you were logged out is back as you left it: check it, then apply.";
    return true;
  }

  async function api(method, path, body) {
    const init = {method, credentials: "same-origin", headers: {}};
    if (method !== "GET") init.headers["X-CSRF-Token"] = me.csrf || "";
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const answer = await fetch(path, init);
    if (answer.status === 401) { toLogin(); throw new Error("logged out"); }
    const type = answer.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await answer.json() : {errors: [await answer.text()]};
    return {status: answer.status, ok: answer.ok, data};
  }

  /** A request that got no answer (the gateway restarting, the network gone), as an
   * answer with the error to show: an action never does nothing without a word. */
  const noAnswer = err => ({status: 0, ok: false, data: {errors: [
    `no answer from the gateway (${err.message}); try again when it is back`]}});

  async function loadConfig(force) {
    const hash = status && status.config ? status.config.hash : null;
    if (config && !force && hash === configHash) return config;
    const answer = await api("GET", "api/config");
    config = answer.ok ? answer.data.config : {sources: {}, routes: {}, sinks: {}};
    configErrors = answer.ok ? [] : answer.data.errors || [`HTTP ${answer.status}`];
    noConfigFile = !answer.ok && answer.data.path === null;
    configHash = hash;
    return config;
  }

  // -- the live stream --------------------------------------------------------------

  // A document comes each second (its uptime changes): this long without one, the
  // stream is lost though no error came (a connection cut without a word).
  const SILENCE = 35000;
  let heard = 0; // when the stream last sent a document (ms)
  let retries = 0; // streams opened anew since the last document
  let again = null; // the timer opening the stream anew
  let watchdog = null;

  function connect() {
    if (events) return;
    clearTimeout(again);
    again = null;
    events = new EventSource("api/events");
    heard = Date.now();
    clearInterval(watchdog);
    watchdog = setInterval(() => {
      if (events && Date.now() - heard > SILENCE) { lost(); reopen(); }
    }, 5000);
    events.onmessage = e => {
      heard = Date.now();
      retries = 0;
      const doc = JSON.parse(e.data);
      const now = performance.now();
      if (previous) {
        const dt = (now - previous.at) / 1000;
        rates = {source: {}, sink: {}, route: {}, emitted: {}};
        const per = (now, before, key) => before ? Math.max(0, num(now[key]) - num(before[key])) / dt : 0;
        for (const [n, r] of Object.entries(doc.routes)) {
          rates.route[n] = per(r, previous.doc.routes[n], "received");
          rates.emitted[n] = per(r, previous.doc.routes[n], "emitted");
        }
        for (const [n, s] of Object.entries(doc.sources)) {
          const before = previous.doc.sources[n];
          rates.source[n] = before ? Math.max(0, num(s.produced) - num(before.produced)) / dt : 0;
        }
        for (const [n, s] of Object.entries(doc.sinks)) {
          const before = previous.doc.sinks[n];
          rates.sink[n] = before ? Math.max(0, num(s.delivered) - num(before.delivered)) / dt : 0;
        }
      }
      previous = {doc, at: now};
      status = doc;
      lostAt = null;
      $("live").textContent = "live";
      $("live").className = "ok";
      render();
    };
    events.onerror = () => {
      lost();
      // CONNECTING: the browser tries again by itself. CLOSED: it never will (a 503 when
      // 16 streams are open, a 401): the page said "No answer" for good, though the
      // gateway answered, so it is opened anew here.
      if (events && events.readyState === EventSource.CLOSED) reopen();
      whoAmI().catch(() => {});
    };
  }

  function lost() {
    $("live").textContent = "cannot reach the gateway; trying again...";
    $("live").className = "bad";
    // the verdict said what the last document said ("All flowing") with the gateway gone
    if (lostAt === null) { lostAt = Date.now(); render(); }
  }

  /** The stream opened anew after 1, 2, 4 ... at most 30 s, give or take a fifth so that
   * the tabs a gateway restart cut off do not all come back at the same moment (a shown
   * tab only). */
  function reopen() {
    if (events) { events.close(); events = null; }
    clearTimeout(again);
    const wait = Math.min(30000, 1000 * 2 ** Math.min(retries++, 5)) * (0.8 + 0.4 * Math.random());
    again = setTimeout(() => { again = null; if (!document.hidden) connect(); }, wait);
  }

  function disconnect() {
    clearTimeout(again);
    again = null;
    clearInterval(watchdog);
    watchdog = null;
    if (events) { events.close(); events = null; }
    previous = null;
  }

  // -- pages ------------------------------------------------------------------------

  function show(name) {
    const [base, query] = name.split("?");
    page = PAGES.includes(base) ? base : "overview";
    for (const p of PAGES) $("page-" + p).hidden = p !== page;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.getAttribute("href") === "#" + page) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (page === "editor") openEditor(new URLSearchParams(query || ""));
    if (page === "pipeline" && selected) showNode(selected.kind, selected.name);
    resume();
  }

  /** The open page's polling started again and its data read anew; what the user is
   * typing (the route editor's form) is left as it is. Also when a hidden tab is shown
   * again: reopening the page there refilled the form and lost an edit in progress. */
  function resume() {
    clearInterval(timer);
    timer = null;
    if (page === "topics") { pollTopics(); timer = setInterval(pollTopics, 2000); }
    if (page === "devices") { pollDevices(); timer = setInterval(pollDevices, 5000); }
    if (page === "dead") { deadCount = -1; }
    render();
  }

  function render() {
    // no document yet (the first stream refused: 16 open): "No answer ...", not "loading..."
    if (!status && lostAt === null) return;
    const verdict = currentVerdict();
    $("verdict-top").textContent = verdict;
    $("verdict-top").className = verdict === "All flowing" ? "ok" : "bad";
    if (!status) return;
    $("gw").textContent = status.gateway.id;
    $("disk").textContent = W.diskBanner(status);
    if (page === "overview") renderOverview();
    if (page === "pipeline") renderPipeline();
    if (page === "sinks") renderSinks();
    if (page === "devices") renderDevices();
    if (page === "dead") renderDead();
    if (page === "alerts") renderAlerts();
    if (page === "editor") renderEditorLive();
  }

  /** The verdict of the newest document, or that there is none since the stream stopped:
   * the page's numbers are then from that time. */
  const currentVerdict = () => lostAt === null ? W.verdict(status) :
    `No answer from the gateway since ${W.when(lostAt / 1000)}`;

  // Overview --------------------------------------------------------------------------

  function renderOverview() {
    const s = status;
    const c = s.config || {};
    const r = c.last_reload;
    const verdict = currentVerdict();
    $("verdict").textContent = verdict;
    $("verdict").className = "verdict " + (verdict === "All flowing" ? "ok" : "bad");
    const facts = [
      ["Gateway", s.gateway.id],
      ["Version", s.gateway.version || ""],
      ["Up for", W.ago(s.gateway.uptime_s)],
      ["Ingested", String(num(s.gateway.ingested))],
      ["Config", (c.path || "none") + (c.hash ? " (hash " + c.hash + ")" : "")],
      ["Last reload", r ? `${r.outcome} (${r.trigger}, ${W.when(r.at)})` : "none since start"],
      // a refused or rolled-back reload changed nothing: what it would have changed
      W.reloadChange(r),
      ["Reload errors", r && r.errors.length ? r.errors.join("; ") : ""],
      ["MQTT broker", s.broker ? s.broker.url + (s.broker.embedded ? " (embedded)" : "") : ""],
      ["Store", `${W.bytes(s.store.bytes)} of ${W.bytes(s.store.max_bytes)}, ` +
        `${num(s.store.dropped)} dropped, ${num(s.dead_letters)} dead letters`],
    ];
    const dl = $("facts");
    if (dl.children.length !== facts.length * 2) {
      dl.replaceChildren(...facts.flatMap(([k]) => [el("dt", {text: k}), el("dd")]));
    }
    facts.forEach(([k, v], i) => {
      dl.children[2 * i].textContent = k;
      dl.children[2 * i + 1].textContent = v;
    });
    const active = (s.alerts && s.alerts.active) || [];
    syncRows($("overview-alerts"), active.map(a => [a.key,
      [{text: "firing", cls: "bad"}, a.message, W.ago(Date.now() / 1000 - a.fired_at) + " ago"]]),
    "no active alerts");
  }

  // Pipeline --------------------------------------------------------------------------

  let graphShape = "";
  const NODE_W = 210;
  const NODE_H = 58;
  const GAP = 76;

  function feeds(sourceName, route) {
    const src = config && config.sources ? config.sources[sourceName] : null;
    const topics = src && Array.isArray(src.topics) ? src.topics : null;
    if (!topics) return true; // it names no topic filters: it may feed any route
    return topics.some(t => route.match.some(m => W.overlap(t, m)));
  }

  function renderPipeline() {
    const s = status;
    // the graph's shape: names, matches, processors and sinks, not the counts (rebuilding
    // on each event would lose the keyboard focus and the chosen node every second)
    const routes = Object.entries(s.routes).map(([n, r]) => [n, r.match, r.processors, r.sinks]);
    const shape = JSON.stringify([Object.keys(s.sources), routes, Object.keys(s.sinks),
      s.config ? s.config.hash : null]);
    if (shape !== graphShape) {
      graphShape = shape;
      loadConfig().then(() => buildGraph()).catch(() => buildGraph());
    }
    updateGraph();
    if (selected) updateNode();
  }

  function buildGraph() {
    const s = status;
    const cols = [Object.keys(s.sources), Object.keys(s.routes), Object.keys(s.sinks)];
    const height = Math.max(1, ...cols.map(c => c.length)) * GAP + 40;
    const width = 3 * NODE_W + 2 * 150 + 20;
    const g = $("graph");
    g.setAttribute("viewBox", `0 0 ${width} ${height}`);
    g.replaceChildren();
    const pos = {};
    const x = [10, 10 + NODE_W + 150, 10 + 2 * (NODE_W + 150)];
    cols.forEach((names, ci) => {
      const top = (height - names.length * GAP) / 2 + (GAP - NODE_H) / 2;
      names.forEach((n, i) => { pos[["source", "route", "sink"][ci] + " " + n] = [x[ci], top + i * GAP]; });
    });
    const edges = svg("g", {class: "edges"});
    const edge = (from, to, kind, name, dashed) => {
      const [x1, y1] = pos[from];
      const [x2, y2] = pos[to];
      const a = [x1 + NODE_W, y1 + NODE_H / 2];
      const b = [x2, y2 + NODE_H / 2];
      const mid = (a[0] + b[0]) / 2;
      edges.append(svg("path", {d: `M${a[0]},${a[1]} C${mid},${a[1]} ${mid},${b[1]} ${b[0]},${b[1]}`,
        class: "edge" + (dashed ? " maybe" : "")}));
      if (!kind) return;
      const label = svg("text", {x: mid, y: (a[1] + b[1]) / 2 - 4, class: "rate",
        "text-anchor": "middle", "data-rate": kind + " " + name});
      edges.append(label);
    };
    for (const [rn, r] of Object.entries(s.routes)) {
      // an edge's rate: what the route took in (on its feeding
      // edge when one source feeds it; several: unknown per edge) and what it handed on
      const from = Object.keys(s.sources).filter(sn => feeds(sn, r));
      for (const sn of from) {
        const src = config && config.sources ? config.sources[sn] : null;
        edge("source " + sn, "route " + rn, from.length === 1 ? "route" : null, rn,
          !(src && src.topics));
      }
      if (from.length > 1) {
        // several sources: what the route takes in, where their edges meet (a source
        // without topic filters, such as `system`, feeds every route: with one in the
        // config no edge into a route had a rate)
        const [x2, y2] = pos["route " + rn];
        edges.append(svg("text", {x: x2 - 6, y: y2 + NODE_H / 2 - 6, class: "rate",
          "text-anchor": "end", "data-rate": "route " + rn}));
      }
      for (const k of r.sinks) if (pos["sink " + k]) edge("route " + rn, "sink " + k, "emitted", rn);
    }
    g.append(edges);
    for (const [key, [nx, ny]] of Object.entries(pos)) {
      const [kind, ...rest] = key.split(" ");
      const name = rest.join(" ");
      const chosen = selected && key === selected.kind + " " + selected.name;
      const node = svg("g", {class: "node" + (chosen ? " chosen" : ""), tabindex: "0", role: "button",
        transform: `translate(${nx},${ny})`, "data-node": key});
      node.append(svg("rect", {width: NODE_W, height: NODE_H, rx: 6}));
      node.append(svg("text", {x: 10, y: 19, class: "name"}, cut(name, 24)));
      let sub = kind;
      if (kind === "route") {
        const r = s.routes[name];
        sub = cut(r.match.join(", "), 28);
        const conf = config && config.routes ? config.routes[name] : null;
        const types = conf ? (conf.processors || []).map(p => p.type) :
          r.processors.map(label => (/\(([^)]*)\)/.exec(label) || [, label])[1]);
        const procs = types.length ? types.join(" → ") : "no processors";
        node.append(svg("text", {x: 10, y: 51, class: "small"}, cut(procs, 30)));
      } else {
        node.append(svg("text", {x: 10, y: 51, class: "small", "data-state": key}));
        const entry = kind === "source" ? s.sources[name] : s.sinks[name];
        const type = entry.type || (config && config.sources && config.sources[name] ?
          config.sources[name].type : "");
        sub = type ? `${kind} · ${type}` : kind;
      }
      node.append(svg("text", {x: 10, y: 35, class: "small muted"}, sub));
      node.append(svg("title", {"data-title": key}, name));
      node.setAttribute("aria-label", `${kind} ${name}`);
      const open = () => showNode(kind, name);
      node.addEventListener("click", open);
      node.addEventListener("keydown", e => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); }
      });
      g.append(node);
    }
    updateGraph();
  }

  const cut = (text, n) => {
    const t = String(text ?? "");
    return t.length > n ? t.slice(0, n - 1) + "…" : t;
  };

  function updateGraph() {
    const s = status;
    for (const label of $("graph").querySelectorAll("[data-rate]")) {
      const [kind, ...rest] = label.dataset.rate.split(" ");
      const r = (rates[kind] || {})[rest.join(" ")];
      label.textContent = r === undefined ? "" : W.rate(r);
    }
    for (const t of $("graph").querySelectorAll("[data-state]")) {
      const [kind, ...rest] = t.dataset.state.split(" ");
      const name = rest.join(" ");
      const entry = kind === "source" ? s.sources[name] : s.sinks[name];
      if (!entry) continue;
      let word = entry.state;
      if (kind === "sink") word += ` · ${num(entry.delivered)} delivered`;
      else word += ` · ${num(entry.produced)} in · ${W.rate(rates.source[name])}`;
      t.textContent = word;
      t.setAttribute("class", "small " + W.stateClass(entry.state));
      const node = t.parentNode;
      node.setAttribute("class", "node " + W.stateClass(entry.state));
      node.classList.toggle("chosen", !!selected && node.dataset.node === selected.kind + " " +
        selected.name);
      node.querySelector("title").textContent =
        `${name}: ${entry.state}` + (entry.last_error ? ` - ${entry.last_error}` : "");
      node.setAttribute("aria-label", `${kind} ${name}, ${entry.state}` +
        (entry.last_error ? `, last error: ${entry.last_error}` : ""));
    }
  }

  async function showNode(kind, name) {
    selected = {kind, name};
    for (const n of $("graph").querySelectorAll(".node")) {
      n.classList.toggle("chosen", n.dataset.node === kind + " " + name);
    }
    $("node").hidden = false;
    $("node-title").textContent = `${kind} ${name}`;
    const conf = await loadConfig().catch(() => null);
    const section = conf ? conf[kind + "s"] : null;
    $("node-config").textContent = section && section[name] ?
      JSON.stringify(section[name], null, 2) : "(not in the config file)";
    updateNode();
    const answer = await api("GET", "api/series").catch(() => null);
    if (answer && answer.ok) drawSparks(kind, name, answer.data);
  }

  function updateNode() {
    const {kind, name} = selected;
    const entry = kind === "source" ? status.sources[name] :
      (kind === "sink" ? status.sinks[name] : status.routes[name]);
    if (!entry) { $("node-state").textContent = "gone from the running config"; return; }
    $("node-state").replaceChildren(entry.state ? state(entry.state) : "",
      entry.last_error ? ` last error: ${entry.last_error}` : "");
    const rows = Object.entries(entry).filter(([, v]) => v === null || typeof v !== "object" ||
      Array.isArray(v)).map(([k, v]) => [k, [k, Array.isArray(v) ? v.join(", ") :
      (k.endsWith("_s") && v !== null ? W.ago(v) : String(v ?? ""))]]);
    if (rates[kind] && rates[kind][name] !== undefined) {
      rows.push(["rate", ["rate now", W.rate(rates[kind][name])]]);
    }
    syncRows($("node-counters"), rows);
  }

  function drawSparks(kind, name, data) {
    const box = $("node-sparks");
    box.replaceChildren();
    const step = num(data.interval_s) || 10;
    for (const [key, points] of Object.entries(data.series || {})) {
      if (!key.startsWith(`${kind} ${name} `)) continue;
      const counter = !key.endsWith(" depth");
      const values = counter ? points.slice(1).map((v, i) => Math.max(0, v - points[i]) / step) :
        points;
      box.append(spark(key.slice(kind.length + name.length + 2) + (counter ? " per second" : ""),
        values));
    }
    if (!box.children.length) {
      // /api/series keeps sources' and sinks' counters: a route never gets points
      box.append(el("p", {class: "muted", text: kind === "route" ?
        "no 15-minute series for a route (sources and sinks have them); its counters:" :
        "no points yet"}));
    }
  }

  function spark(label, values) {
    const w = 300;
    const h = 40;
    const max = Math.max(1e-9, ...values);
    const pts = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},` +
      `${h - (v / max) * (h - 2) - 1}`).join(" ");
    const pic = svg("svg", {viewBox: `0 0 ${w} ${h}`, class: "spark", role: "img",
      "aria-label": `${label}, last 15 minutes`});
    pic.append(svg("polyline", {points: pts || "0,39", fill: "none"}));
    const last = values.length ? values[values.length - 1] : 0;
    return el("figure", {}, pic, el("figcaption", {text:
      `${label}: now ${Math.round(last * 10) / 10}, top ${Math.round(max * 10) / 10} (15 min)`}));
  }

  // Topics ----------------------------------------------------------------------------

  async function pollTopics() {
    if (document.hidden) return;
    const filter = $("topic-filter").value.trim() || "#";
    const answer = await api("GET", "api/topics?limit=500&filter=" + encodeURIComponent(filter))
      .catch(() => null);
    if (!answer) return;
    // the filter's problem, and no rows: those of the last filter are not its answer
    if (answer.ok) $("topic-filter").removeAttribute("aria-invalid");
    else $("topic-filter").setAttribute("aria-invalid", "true");
    if (!answer.ok) {
      $("topic-note").textContent = (answer.data.errors || []).join("; ");
      syncRows($("topics"), [], "none: the topic filter is not valid");
      return;
    }
    const d = answer.data;
    $("topic-note").textContent = `${d.topics.length} of ${d.seen} topics seen lately` +
      ` (kept: at most ${d.kept_at_most})`;
    const now = Date.now() / 1000;
    const items = [];
    let parents = [];
    for (const t of d.topics) {
      const levels = t.topic.split("/");
      // a heading row for each level not shown yet: the tree
      for (let i = 0; i < levels.length - 1; i++) {
        const prefix = levels.slice(0, i + 1).join("/");
        if (parents[i] !== prefix) {
          parents = parents.slice(0, i);
          parents[i] = prefix;
          items.push(["dir " + prefix, [{text: levels[i] + "/", cls: `level l${Math.min(i, 6)}`,
            title: prefix}, "", "", "", "", "", () => ""]]);
        }
      }
      parents = parents.slice(0, levels.length - 1);
      const payload = t.payload_hex !== undefined ? "hex " + W.hexLines(t.payload_hex).split("\n")
        .map(l => l.slice(8)).join(" ") : t.payload;
      items.push(["topic " + t.topic, [
        {text: levels[levels.length - 1] || "(empty)", cls: `leaf l${Math.min(levels.length - 1, 6)}`,
          title: t.topic},
        W.rate(t.rate), String(t.count),
        // the gateway keeps the start of the last payload only: a cut one says its size
        // (it read "xxxx…" alike for 300 bytes and for 200 KiB)
        {text: payload === "" ? "(empty)" : (payload.length > 120 ? cut(payload, 120) :
          payload + (t.truncated ? "…" : "")) + (t.truncated ? ` (${W.bytes(t.size)} in all)` : ""),
        cls: "payload", title: payload + (t.truncated ? `… (the start of ${t.size} bytes)` : "")},
        W.ago(now - t.last_seen) + " ago",
        {text: t.routes.length ? t.routes.join(", ") : "no route", cls: t.routes.length ? "" : "warn"},
        () => button("Route this topic", () => routeTopic(t.topic), {edit: true,
          name: `Route topic ${t.topic}`}),
      ]]);
    }
    syncRows($("topics"), items, d.seen ? `none of the ${d.seen} topics seen lately matches ` +
      filter : "no topics seen yet");
    for (const tr of $("topics").children) {
      const key = tr.dataset.key || "";
      if (key.startsWith("topic ")) tr.firstChild.setAttribute("aria-label", key.slice(6));
    }
  }

  /** Open `hash`; the one open already too (no hashchange then: Edit on the route being
   * edited did nothing, where it should show it as it is in the config). */
  function go(hash) {
    if (location.hash === hash) show(hash.slice(1));
    else location.hash = hash;
  }

  function routeTopic(topic) {
    go("#editor?topic=" + encodeURIComponent(topic));
  }

  async function whichRoutes(e) {
    e.preventDefault();
    const topic = $("match-topic").value.trim();
    const answer = await api("GET", "api/routes/match?topic=" + encodeURIComponent(topic))
      .catch(noAnswer);
    const out = $("match-result");
    if (!answer.ok) { out.textContent = (answer.data.errors || []).join("; "); return; }
    const routes = answer.data.routes;
    out.replaceChildren(routes.length ? `${topic} goes to: ${routes.join(", ")} ` :
      `No route takes ${topic}. `, button("Route this topic", () => routeTopic(topic),
      {edit: true}));
  }

  // Route editor ----------------------------------------------------------------------

  async function openEditor(query) {
    await loadConfig(true).catch(() => {});
    if ($("route-outcome").className === "bad") $("route-outcome").textContent = "";
    renderRouteList();
    loadVersions();
    const topic = query.get("topic");
    const route = query.get("route");
    lockEditor();
    if (configErrors.length) {
      // the file on disk does not load (edited by hand): no route "was removed"; the
      // gateway runs on as before, and a kept version below can be put back. A route
      // being typed stays (until the user discards it), to be checked once it loads.
      if (topic) fillForm(topicRoute(topic), {match: [topic], processors: [], sinks: []}, true);
      else if (route || formEmpty()) fillForm("", {match: [], processors: [], sinks: []}, true);
      else clearResult();
      $("route-outcome").className = "bad";
      $("route-outcome").textContent = W.editorLocked(configErrors, noConfigFile);
    } else if (topic) {
      fillForm(topicRoute(topic), {match: [topic], processors: [], sinks: []}, true);
    } else if (route && config && config.routes && Object.hasOwn(config.routes, route)) {
      fillForm(route, config.routes[route], false);
    } else if (route) {
      // a link to a route that is not (or no longer) in the config: said, and a new form
      // rather than whichever route the form showed before under its title
      fillForm("", {match: [], processors: [], sinks: []}, true);
      $("route-outcome").className = "bad";
      $("route-outcome").textContent = `No route named ${route} in the config; it may have` +
        " been removed. Choose one from the list, or make a new one here.";
    } else if (!$("route-name").value) {
      fillForm("", {match: [], processors: [], sinks: []}, true);
    }
    restoreDraft(topic, route);
    // Route this topic (on the Topics page, hidden now) and Edit (above the form) leave
    // the keyboard's focus where the form is: it was on the page's body, or on the list
    if ((topic || route) && !document.activeElement.closest("form#route-form")) {
      $("route-title").focus();
    }
  }

  /** The name a new route for `topic` gets. */
  const topicRoute = topic => "route_" + (topic.replace(/[^A-Za-z0-9_]+/g, "_")
    .replace(/^_+|_+$/g, "").slice(-40) || "new");

  /** Nothing typed in the route form (a new route, no name, match or processor). */
  const formEmpty = () => !$("route-name").readOnly && !$("route-name").value.trim() &&
    !$("route-match").value.trim() && !$("processors").children.length;

  /** Check and Remove off while the config file does not load (or there is none):
   * nothing can be checked against it. A viewer's stay off (guard). */
  function lockEditor() {
    const locked = configErrors.length > 0;
    for (const b of [$("check"), $("remove-route")]) {
      b.disabled = locked || me.role !== "operator";
      b.title = locked ? (noConfigFile ? "No config file to edit" :
        "The config file does not load: see the message below") : "";
      if (!locked) guard(b);
    }
  }

  function renderRouteList() {
    const routes = config && config.routes ? Object.entries(config.routes) : [];
    syncRows($("route-list"), routes.map(([n, r]) => [n, [n, (r.match || []).join(", "),
      (r.sinks || []).join(", "), () => button("Edit", () => {
        go("#editor?route=" + encodeURIComponent(n));
      }, {name: `Edit route ${n}`})]]), configErrors.length ? "none shown: the config file does not load" : "no routes");
  }

  function fillForm(name, route, isNew) {
    $("route-name").value = name;
    $("route-name").readOnly = !isNew;
    $("route-title").textContent = isNew ? "New route" : `Route ${name}`;
    $("route-match").value = (route.match || []).join("\n");
    $("processors").replaceChildren();
    for (const p of route.processors || []) addProcessor(p);
    renderSinkChoice(route.sinks || []);
    $("remove-route").hidden = isNew;
    clearResult();
    filledWith = formText();
  }

  function renderSinkChoice(chosen) {
    const names = Object.keys((config && config.sinks) || (status && status.sinks) || {});
    $("route-sinks").replaceChildren(el("legend", {text: "Target sinks"}),
      ...names.map(n => el("label", {class: "check"},
        el("input", {attrs: {type: "checkbox", value: n, name: "sink", checked: chosen.includes(n)},
          on: {change: clearResult}}),
        ` ${n}` + (config && config.sinks[n] ? ` (${config.sinks[n].type})` : ""))));
    if (!names.length) $("route-sinks").append(el("p", {class: "muted", text: "no sinks"}));
  }

  function addProcessor(p) {
    const list = $("processors");
    const {type, ...settings} = p || {type: "json"};
    const index = list.children.length;
    const typeId = `proc-type-${Date.now()}-${index}`;
    const setId = typeId + "-settings";
    const li = el("li", {class: "processor"},
      el("label", {text: "Type", attrs: {for: typeId}}),
      el("input", {class: "ptype", attrs: {id: typeId, list: "processor-types", value: type || ""},
        on: {input: clearResult}}),
      el("label", {text: "Settings (JSON)", attrs: {for: setId}}),
      el("textarea", {class: "psettings", text: Object.keys(settings).length ?
        JSON.stringify(settings, null, 1) : "{}", attrs: {id: setId, rows: 3},
      on: {input: clearResult}}),
      // the processor moved is left where it is and its neighbour moved past it: a moved
      // node loses the keyboard focus, and Up (or Remove) left it on the page's body
      el("div", {class: "row"},
        button("Up", () => { if (li.previousSibling) list.insertBefore(li.previousSibling, li.nextSibling); clearResult(); }, SECONDARY_EDIT),
        button("Down", () => { if (li.nextSibling) list.insertBefore(li.nextSibling, li); clearResult(); }, SECONDARY_EDIT),
        button("Remove", () => {
          // the focus to the same button of the processor taking its place, else Add
          const next = li.nextSibling || li.previousSibling;
          li.remove();
          (next ? next.querySelectorAll("button")[2] : $("add-processor")).focus();
          clearResult();
        }, SECONDARY_EDIT)));
    // Up, Down and Remove described by their processor's type ("Up, json"), which a
    // screen reader read alike for every processor
    for (const b of li.querySelectorAll(".row button")) b.setAttribute("aria-describedby", typeId);
    list.append(li);
  }

  /** The form as the route's config; null (and the problem shown) when a field is wrong. */
  function formRoute() {
    const problems = [];
    const processors = [];
    [...$("processors").children].forEach((li, i) => {
      const type = li.querySelector(".ptype").value.trim();
      let settings = {};
      try {
        settings = JSON.parse(li.querySelector(".psettings").value || "{}");
        if (typeof settings !== "object" || Array.isArray(settings) || settings === null) throw 0;
      } catch (e) {
        problems.push(`processors.${i}: the settings must be a JSON object, e.g. {"field": "x"}`);
        settings = {};
      }
      processors.push({type, ...settings});
    });
    const route = {
      match: $("route-match").value.split("\n").map(s => s.trim()).filter(Boolean),
      sinks: [...$("route-sinks").querySelectorAll("input:checked")].map(i => i.value),
      processors,
    };
    return {route, problems};
  }

  function clearResult() {
    pending = null;
    $("apply").disabled = true;
    $("apply").dataset.why = "check first";
    $("route-status").textContent = "";
    for (const n of document.querySelectorAll("#page-editor [aria-invalid]")) {
      n.removeAttribute("aria-invalid");
      n.removeAttribute("aria-describedby");
    }
    for (const n of document.querySelectorAll("#page-editor .field-error")) n.remove();
    $("route-errors").replaceChildren();
    $("route-preview").hidden = true;
  }

  function showErrors(name, errors) {
    const list = $("route-errors");
    list.replaceChildren(...errors.map(e => el("li", {text: e})));
    // point at the field each key path names; `routes.NAME:` itself is about the name
    const fields = {name: "route-name", match: "route-match", sinks: "route-sinks",
      processors: "processors"};
    const path = new RegExp(`routes\\.${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}` +
      "(?:\\.(match|sinks|processors)(?:\\.(\\d+))?|(?=:))");
    for (const e of errors) {
      const m = String(e).match(path);
      const own = /^processors\.(\d+)/.exec(e);
      const key = m ? m[1] || "name" : own ? "processors" :
        /^name:|\broute name\b/.test(e) ? "name" : null;
      if (!key) continue;
      let node = $(fields[key]);
      const index = m ? m[2] : (own || [])[1];
      if (key === "processors" && index !== undefined && node.children[index]) {
        node = node.children[index];
      }
      node.setAttribute("aria-invalid", "true");
      // the message also next to the field it names (inside a fieldset or a processor)
      const id = `field-error-${document.querySelectorAll(".field-error").length}`;
      const note = el("p", {class: "field-error", text: e, attrs: {id}});
      if (node.tagName === "LI" || node.tagName === "FIELDSET") node.append(note);
      else node.after(note);
      node.setAttribute("aria-describedby", id);
    }
  }

  /** A request that got no answer (the gateway restarting, the network gone): said as an
   * error, so that "checking..." or "applying..." does not stay forever. */
  const unreachable = err => ({status: 0, ok: false, data: {errors: [
    `no answer from the gateway (${err.message}); see the route list and History for what it has`]}});

  async function check(method) {
    clearResult();
    const name = $("route-name").value.trim();
    if (!name) { showErrors("", ["name: give the route a name (letters, digits, _)"]); return; }
    if (method === "PUT" && !$("route-name").readOnly && config && config.routes &&
        Object.hasOwn(config.routes, name)) {
      // a new route under a name in use would replace that route
      showErrors(name, [`name: a route named ${name} exists already; choose another name,` +
        " or edit that route from the list"]);
      return;
    }
    const {route, problems} = formRoute();
    if (problems.length) { showErrors(name, problems); return; }
    const path = "api/config/routes/" + encodeURIComponent(name);
    const body = method === "PUT" ? route : undefined;
    $("route-status").textContent = "checking...";
    const answer = await api(method, path + "?check=1", body).catch(unreachable);
    $("route-status").textContent = "";
    if (!answer.ok) {
      showErrors(name, answer.data.errors || [`HTTP ${answer.status}`]);
      return;
    }
    $("route-preview").hidden = false;
    $("route-changes").replaceChildren(...(answer.data.changes.length ? answer.data.changes :
      ["nothing changes"]).map(c => el("li", {text: c})));
    $("route-diff").textContent = answer.data.diff || "(no difference)";
    if (!answer.data.changes.length) {
      // nothing to apply: applying would still rewrite the route's lines in the file
      // (its defaults written out) and keep a version in History, for no change
      $("route-status").textContent = "Nothing to apply: the config has this already.";
      return;
    }
    // the file's hash the check read: Apply sends it, and the gateway refuses the edit
    // if the file changed since (the live stream's hash was stale in a hidden tab)
    pending = {method, path, body, name, hash: answer.data.hash};
    $("apply").disabled = me.role !== "operator";
    $("apply").textContent = method === "DELETE" ? `Apply: remove ${name}` : `Apply ${name}`;
  }

  async function apply() {
    if (!pending) return;
    const {method, path, body, name, hash} = pending;
    // Apply is off while it runs, and a button turned off loses the keyboard focus: the
    // outcome takes it (the page's body had it, and Tab went on from the top)
    const keyboard = document.activeElement === $("apply");
    $("apply").disabled = true;
    $("route-status").textContent = "applying...";
    const answer = await api(method, hash ? `${path}?hash=${encodeURIComponent(hash)}` : path,
      body).catch(unreachable);
    $("route-status").textContent = "";
    pending = null;
    const d = answer.data;
    if (answer.status === 409 && d.outcome === "changed") {
      // the config changed since the check (another user's edit, a rollback, the file
      // edited by hand): written, the edit would have undone the other change in this
      // route without a word; checked again, shown, not applied
      const out = $("route-outcome");
      await check(method);
      out.className = "warn";
      out.textContent = "Not applied: the config file changed since your check. " + (
        pending ? "It is checked again above: see what the edit changes now, then apply." :
        $("route-preview").hidden ? "Checking it again failed: see the message above," +
          " then check again." : "It is checked again above: it has this edit already.");
      if (keyboard || document.activeElement === document.body) out.focus();
      return;
    }
    const changed = (d.changes && d.changes.length) ? d.changes : [];
    const out = $("route-outcome");
    if (answer.ok) {
      out.className = "ok";
      out.textContent = `Applied (${method === "DELETE" ? "removed" : "written"} ${name}). ` +
        (changed.length ? `Restarted or changed: ${changed.join("; ")}. ` : "") +
        "Everything else kept running." + (d.version ? ` The old file is kept as ${d.version}.` : "");
      $("route-preview").hidden = true;
      await loadConfig(true).catch(() => {});
      renderRouteList();
      loadVersions();
      if (method === "DELETE") fillForm("", {match: [], processors: [], sinks: []}, true);
      else $("route-name").readOnly = true;
    } else {
      out.className = "bad";
      out.textContent = answer.status === 0 ? d.errors[0] :
        `Not applied (${d.outcome || answer.status}); the file is as it was.`;
      showErrors(name, d.errors || []);
    }
    if (keyboard) out.focus();
  }

  async function loadVersions() {
    const answer = await api("GET", "api/config/versions").catch(() => null);
    versions = {list: answer && answer.ok ? answer.data.versions : [], note: W.historyNote(answer)};
    renderVersions();
  }

  /** The kept versions, the one the gateway runs marked (status.config.hash). */
  function renderVersions() {
    const running = status && status.config ? status.config.hash : null;
    syncRows($("versions"), versions.list.slice(0, 20).map(v => [v.name, [W.when(v.saved_at),
      {text: W.versionHash(v, running), cls: v.hash === running ? "ok" : ""}, v.name,
      () => button("Roll back to this", () => rollback(v.name), {edit: true,
        name: `Roll back to version ${v.name}`})]]), versions.note);
  }

  async function rollback(name) {
    if (!confirm(`Put version ${name} back and apply it?`)) return;
    const answer = await api("POST", "api/config/rollback", {version: name}).catch(noAnswer);
    const out = $("route-outcome");
    const d = answer.data;
    out.className = answer.ok ? "ok" : "bad";
    out.textContent = answer.ok ? `Rolled back to ${name} (${d.outcome}).` +
      (d.changes && d.changes.length ? ` Restarted or changed: ${d.changes.join("; ")}.` : "") :
      `Not rolled back (${d.outcome || answer.status || "no answer"}): ${(d.errors || []).join("; ")}`;
    await loadConfig(true).catch(() => {});
    lockEditor();
    renderRouteList();
    loadVersions();
    if (answer.ok) {
      // the form shows the route as it now is: a route the old version lacks is gone
      const shown = $("route-name").value.trim();
      const now = config && config.routes ? config.routes[shown] : null;
      if (now) fillForm(shown, now, false);
      else fillForm("", {match: [], processors: [], sinks: []}, true);
    }
  }

  function renderEditorLive() {
    const r = status.config && status.config.last_reload;
    const [label, changed] = W.reloadChange(r);
    $("editor-reload").textContent = r ? `Last reload: ${r.outcome} (${r.trigger}, ` +
      `${W.when(r.at)})` + (changed ? (label === "What changed" ? " - " :
        ` - ${label.toLowerCase()}: `) + changed : "") : "";
    renderVersions();
  }

  // Sinks and store -------------------------------------------------------------------

  function renderSinks() {
    const s = status;
    syncRows($("sinks"), Object.entries(s.sinks).map(([n, k]) => [n, [n, k.type,
      {text: k.state, cls: W.stateClass(k.state)}, String(num(k.depth)),
      {text: k.oldest_age_s === null || k.oldest_age_s === undefined ? "" : W.ago(k.oldest_age_s),
        cls: num(k.oldest_age_s) >= 60 ? "bad" : ""},
      String(num(k.delivered)), W.rate(rates.sink[n]), String(num(k.dead_lettered)),
      String(num(k.errors)), {text: k.last_error || "", cls: "error-text"}]]), "no sinks");
    const st = s.store;
    $("store-meter").max = num(st.max_bytes) || 1;
    $("store-meter").value = num(st.bytes);
    $("store-text").textContent = `${W.bytes(st.bytes)} of ${W.bytes(st.max_bytes)} ` +
      `(${Math.round(100 * num(st.bytes) / (num(st.max_bytes) || 1))}%), overflow: ` +
      `${st.overflow}, ${num(st.dropped)} dropped` + (st.blocked ? ", intake BLOCKED" : "") +
      `; disk: ${W.bytes(st.disk.free_bytes)} free`;
    syncRows($("removed-sinks"), Object.entries(st.removed_sinks || {}).map(([n, r]) =>
      [n, [n, String(num(r.depth))]]), "none: no removed sink left a backlog");
  }

  // Devices ---------------------------------------------------------------------------

  let pollLatency = {};

  async function pollDevices() {
    if (document.hidden) return;
    const answer = await api("GET", "api/metrics").catch(() => null);
    const family = answer && answer.ok ? answer.data.edge_stream_modbus_poll_seconds : null;
    const sums = {};
    for (const sample of (family ? family.samples : [])) {
      const key = `${sample.labels.source} ${sample.labels.device}`;
      sums[key] = sums[key] || {};
      if (sample.name.endsWith("_sum")) sums[key].sum = sample.value;
      if (sample.name.endsWith("_count")) sums[key].count = sample.value;
    }
    pollLatency = {};
    for (const [k, v] of Object.entries(sums)) {
      if (v.count) pollLatency[k] = (1000 * v.sum) / v.count;
    }
    renderDevices();
  }

  /** An ISO time from the status document, written as the console writes times. */
  const iso = t => (t && !Number.isNaN(Date.parse(t)) ? W.when(Date.parse(t) / 1000) : (t || ""));

  function renderDevices() {
    if (!status) return;
    const devices = [];
    const ports = [];
    for (const [sn, src] of Object.entries(status.sources)) {
      for (const [dn, d] of Object.entries(src.devices || {})) {
        const latency = pollLatency[`${sn} ${dn}`];
        const requests = num(d.requests);
        devices.push([`${sn} ${dn}`, [dn, sn, {text: d.state, cls: W.stateClass(d.state)},
          d.url || "", String(d.unit ?? ""),
          latency === undefined ? "" : `${latency.toFixed(1)} ms`,
          requests ? `${(100 * num(d.errors) / requests).toFixed(1)}% (${num(d.errors)} of ${requests})` : "",
          iso(d.last_ok), {text: d.last_error ? d.last_error +
            (d.last_error_at ? ` (${iso(d.last_error_at)})` : "") : "", cls: "error-text"}]]);
      }
      if (src.serial) {
        const p = src.serial;
        const extra = Object.entries(p).filter(([k]) => !["state", "last_error", "port"].includes(k))
          .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
        ports.push([sn, [sn, p.port || p.device || "", {text: p.state, cls: W.stateClass(p.state)},
          extra, {text: p.last_error || "", cls: "error-text"}]]);
      }
    }
    syncRows($("devices"), devices, "no Modbus devices in the config");
    syncRows($("ports"), ports, "no serial ports in the config");
  }

  // Dead letters ----------------------------------------------------------------------

  async function renderDead() {
    const count = num(status.dead_letters);
    $("dead-count").textContent = `${count} dead letter${count === 1 ? "" : "s"}`;
    // again when the count changes, and every few seconds (a replay can leave it equal)
    if (count === deadCount && performance.now() - deadAt < 3000) return;
    deadCount = count;
    deadAt = performance.now();
    const answer = await api("GET", "api/dead-letters?limit=100").catch(() => null);
    if (!answer || !answer.ok) return;
    syncRows($("dead"), answer.data.map(d => [String(d.seq), [String(d.seq),
      W.when(d.failed_at_ns / 1e9), {text: d.topic, cls: "topic"}, d.origin,
      {text: d.reason, cls: "error-text"}, W.bytes(d.bytes),
      () => button("Open", () => openDead(d.seq), {name: `Open dead letter ${d.seq}`})]]),
    "no dead letters");
  }

  async function openDead(seq) {
    const answer = await api("GET", `api/dead-letters/${seq}`).catch(noAnswer);
    const box = $("dead-one");
    box.hidden = false;
    if (!answer.ok) {
      // nothing of the letter shown before stays, nor its buttons
      $("dead-title").textContent = `Dead letter ${seq}`;
      $("dead-fields").textContent = (answer.data.errors || []).join("; ");
      $("dead-kind").textContent = "";
      $("dead-content").textContent = "";
      $("dead-all").hidden = true;
      $("dead-outcome").textContent = "";
      $("dead-replay").disabled = true;
      $("dead-purge").disabled = true;
      return;
    }
    const d = answer.data;
    $("dead-title").textContent = `Dead letter ${d.seq}`;
    const fields = [["topic", d.topic], ["id", d.id], ["where", d.origin], ["sink", d.sink || ""],
      ["reason", d.reason], ["created", W.when(d.created_ns / 1e9)], ["size", W.bytes(d.bytes)],
      ["attributes", JSON.stringify(d.attributes)]];
    $("dead-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {text: k}),
      el("dd", {text: v})]));
    const binary = d.content_hex !== undefined;
    $("dead-kind").textContent = (binary ? "Content (binary, as hex)" : "Content (text)") +
      (d.truncated ? ", first 64 KiB" : "");
    $("dead-content").textContent = binary ? W.hexLines(d.content_hex) : d.content;
    // shown: the first 64 KiB; the whole content is a download
    $("dead-all").hidden = !d.truncated;
    $("dead-download").href = `api/dead-letters/${d.seq}/content`;
    $("dead-download").textContent = `Download all ${W.bytes(d.bytes)} (${d.bytes} bytes)`;
    $("dead-outcome").textContent = "";
    for (const b of [$("dead-replay"), $("dead-purge")]) { b.disabled = false; guard(b); }
    $("dead-replay").onclick = () => deadAction("replay", [d.seq]);
    $("dead-purge").onclick = () => deadAction("purge", [d.seq]);
    $("dead-title").focus();
  }

  async function deadAction(action, seqs) {
    if (action === "purge" && !confirm(seqs ? `Delete dead letter ${seqs.join(", ")} for good?` :
      "Delete every dead letter for good?")) return;
    const answer = await api("POST", `api/dead-letters/${action}`, seqs ? {seqs} : {all: true})
      .catch(noAnswer);
    // one letter: said in its open panel; all of them: beside the buttons (the panel may
    // be hidden, and then the outcome would be too)
    const out = $(seqs ? "dead-outcome" : "dead-all-outcome");
    const {count, note} = answer.data;
    out.className = !answer.ok ? "bad" : (count ? "ok" : "warn");
    // nothing done: said so, not "Replayed 0: the gateway takes it in again"
    const none = seqs ? `dead letter ${seqs.join(", ")} is not there any more (replayed or` +
      " purged already)" : "there are no dead letters";
    const verb = action === "replay" ? "replayed" : "purged";
    if (!answer.ok) out.textContent = (answer.data.errors || []).join("; ");
    else if (action === "replay" && count) {
      out.textContent = `Replayed ${count}: the gateway takes ${count === 1 ? "it" : "them"}` +
        " in again like new input." + (note ? ` ${note}.` : "");
    } else if (count) out.textContent = `Purged ${count}.`;
    else out.textContent = `Nothing ${verb}: ` + (note || none) + ".";
    if (seqs && answer.ok && count) {
      // the open letter is gone: its buttons would act on nothing, and the one pressed,
      // turned off, loses the keyboard's focus to the page's body: the outcome takes it
      if ([$("dead-replay"), $("dead-purge")].includes(document.activeElement)) out.focus();
      $("dead-replay").disabled = true;
      $("dead-purge").disabled = true;
    }
    deadCount = -1;
  }

  // Alerts ----------------------------------------------------------------------------

  function renderAlerts() {
    const a = status.alerts || {active: [], recent: []};
    const now = Date.now() / 1000;
    syncRows($("alerts-active"), a.active.map(x => [x.key, [{text: "firing", cls: "bad"},
      x.subject, x.message, `${W.when(x.fired_at)} (${W.ago(now - x.fired_at)} ago)`, x.rule]]),
    "no active alerts");
    syncRows($("alerts-recent"), a.recent.map((x, i) => [`${x.key} ${x.at} ${i}`, [
      {text: x.state, cls: W.stateClass(x.state)}, x.subject, x.message, W.when(x.fired_at),
      x.resolved_at ? W.when(x.resolved_at) : ""]]), "no alerts yet");
  }

  // -- start --------------------------------------------------------------------------

  /** What whoAmI throws when the gateway answered with a refusal it has shown. */
  class Answered extends Error {}

  async function whoAmI() {
    const answer = await fetch("api/session", {credentials: "same-origin"});
    if (answer.status === 401) { toLogin(); return; }
    if (!answer.ok) {
      // the gateway answered (a 503 while the users file is broken says why in its text):
      // read as JSON it threw, and the page said "cannot reach the gateway"
      const said = (await answer.text()).trim() || `the gateway answered ${answer.status}`;
      $("live").textContent = said;
      $("live").className = "bad";
      throw new Answered(said);
    }
    me = await answer.json();
    $("who").textContent = me.auth === "open" ? "open console (localhost, no accounts)" :
      `${me.user} (${me.role})`;
    $("logout").hidden = me.auth !== "session";
    guardAll();
  }

  function start() {
    $("logout").addEventListener("click", async () => {
      await api("POST", "logout").catch(() => {});
      dropDraft(); // after the call: a session ended already kept the form in toLogin
      location.href = "login";
    });
    $("topic-filter-form").addEventListener("submit", e => { e.preventDefault(); pollTopics(); });
    $("match-form").addEventListener("submit", whichRoutes);
    $("add-processor").addEventListener("click", () => { addProcessor(); clearResult(); });
    $("check").addEventListener("click", () => check("PUT"));
    $("remove-route").addEventListener("click", () => check("DELETE"));
    $("apply").addEventListener("click", apply);
    $("new-route").addEventListener("click", () => fillForm("", {match: [], processors: [], sinks: []}, true));
    $("route-match").addEventListener("input", clearResult);
    $("route-name").addEventListener("input", clearResult);
    $("dead-replay-all").addEventListener("click", () => deadAction("replay", null));
    $("dead-purge-all").addEventListener("click", () => deadAction("purge", null));
    $("processor-types").replaceChildren(...PROCESSOR_TYPES.map(t => el("option", {attrs: {value: t}})));
    for (const b of document.querySelectorAll("#check, #apply, #remove-route, #add-processor," +
      " #dead-replay, #dead-purge, #dead-replay-all, #dead-purge-all")) b.dataset.edit = "1";
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    document.addEventListener("visibilitychange", () => {
      // a paused tab costs nothing: no stream, no polling
      if (document.hidden) disconnect(); else { connect(); resume(); }
    });
    whoAmI().then(() => {
      takeDraft();
      // a tab opened in the background (ctrl+click, a restored browser session) opens its
      // stream when first shown: open, it kept the session alive to its 12-hour lifetime
      if (!document.hidden) connect();
      show(location.hash.slice(1) || "overview");
    }).catch(e => {
      if (!(e instanceof Answered)) $("live").textContent = "cannot reach the gateway: " + e;
    });
  }

  start();
})();
