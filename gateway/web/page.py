"""The console's HTML documents. They carry no script and no style of their own: the
Content-Security-Policy allows only the files of gateway/web/static/ (words.js,
console.js, login.js, console.css, favicon.svg), served at /static/NAME."""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Edge Stream</title>
<link rel="stylesheet" href="static/console.css">
<link rel="icon" href="static/favicon.svg" type="image/svg+xml">
<script src="static/words.js" defer></script>
<script src="static/console.js" defer></script>
</head><body>
<header>
 <h1>Edge Stream <span id="gw"></span></h1>
 <p class="bar"><strong id="verdict-top" role="status" aria-live="polite">loading...</strong>
  <span id="live" class="muted">connecting...</span>
  <span id="who" class="muted"></span> <button id="logout" type="button" hidden>Log out</button></p>
 <nav aria-label="Pages"><a href="#overview">Overview</a> <a href="#pipeline">Pipeline</a>
  <a href="#topics">Topics</a> <a href="#editor">Route editor</a> <a href="#sinks">Sinks and store</a>
  <a href="#devices">Devices</a> <a href="#dead">Dead letters</a> <a href="#alerts">Alerts</a></nav>
 <p id="disk" class="bad" role="alert"></p>
</header>
<main>
<section id="page-overview"><h2>Overview</h2>
 <p id="verdict" class="verdict"></p>
 <dl id="facts" class="facts"></dl>
 <h3>Active alerts</h3>
 <div class="scroll"><table><thead><tr><th>State</th><th>What</th><th>Since</th></tr></thead>
 <tbody id="overview-alerts"></tbody></table></div>
</section>
<section id="page-pipeline" hidden><h2>Pipeline</h2>
 <p class="muted">Sources, routes with their processors, and sinks; the edges show the live rate.
  Choose a node (click, or Tab and Enter) for its config, counters and the last 15 minutes.</p>
 <div class="scroll"><svg id="graph" class="graph" role="group" aria-label="The pipeline graph">
 </svg></div>
 <div id="node" class="panel" hidden><h3 id="node-title"></h3><p id="node-state"></p>
  <div id="node-sparks" class="sparks"></div>
  <div class="scroll"><table><thead><tr><th>Counter</th><th>Value</th></tr></thead>
  <tbody id="node-counters"></tbody></table></div>
  <h4>Effective config (secrets ***)</h4><pre id="node-config"></pre></div>
</section>
<section id="page-topics" hidden><h2>Topics</h2>
 <p class="viewer-note warn" hidden>You are signed in as a viewer: routing a topic needs an operator.</p>
 <form id="topic-filter-form" class="row"><label for="topic-filter">Topic filter</label>
  <input id="topic-filter" value="#" spellcheck="false"> <button type="submit">Show</button></form>
 <p id="topic-note" class="muted"></p>
 <form id="match-form" class="row box"><label for="match-topic">Which routes take topic</label>
  <input id="match-topic" spellcheck="false" placeholder="plant/line1/temp">
  <button type="submit">Check</button><span id="match-result" role="status"></span></form>
 <div class="scroll"><table class="tree"><thead><tr><th>Topic</th><th>Rate</th><th>Count</th>
  <th>Last payload</th><th>Last seen</th><th>Routes</th><th><span class="sr">Action</span></th></tr>
  </thead><tbody id="topics"></tbody></table></div>
</section>
<section id="page-editor" hidden><h2>Route editor</h2>
 <p class="viewer-note warn" hidden>You are signed in as a viewer: you can read, not edit.</p>
 <div class="scroll"><table><thead><tr><th>Route</th><th>Match</th><th>Sinks</th>
  <th><span class="sr">Action</span></th></tr></thead><tbody id="route-list"></tbody></table></div>
 <p><button id="new-route" type="button">New route</button></p>
 <form id="route-form" class="panel" novalidate><h3 id="route-title" tabindex="-1">New route</h3>
  <label for="route-name">Name</label><input id="route-name" spellcheck="false">
  <label for="route-match">Match: topic filters, one a line (+ one level, # the rest)</label>
  <textarea id="route-match" rows="2" spellcheck="false"></textarea>
  <fieldset><legend>Processors, in order</legend><ol id="processors"></ol>
   <button id="add-processor" type="button">Add processor</button></fieldset>
  <datalist id="processor-types"></datalist>
  <fieldset id="route-sinks"><legend>Target sinks</legend></fieldset>
  <p class="row"><button id="check" type="button">Check (show before apply)</button>
   <button id="apply" type="button" disabled>Apply</button>
   <button id="remove-route" type="button" hidden>Remove this route...</button>
   <span id="route-status" role="status"></span></p>
  <ul id="route-errors" class="errors" role="alert"></ul>
  <div id="route-preview" hidden><h4>What it changes</h4><ul id="route-changes"></ul>
   <pre id="route-diff" class="diff"></pre></div>
  <p id="route-outcome" role="status" tabindex="-1"></p>
 </form>
 <h3>History</h3><p id="editor-reload" class="muted"></p>
 <div class="scroll"><table><thead><tr><th>Kept at</th><th>Hash</th><th>Version</th>
  <th><span class="sr">Action</span></th></tr></thead><tbody id="versions"></tbody></table></div>
</section>
<section id="page-sinks" hidden><h2>Sinks and store</h2>
 <div class="scroll"><table><thead><tr><th>Sink</th><th>Type</th><th>State</th><th>Backlog</th>
  <th>Oldest</th><th>Delivered</th><th>Rate</th><th>Dead-lettered</th><th>Errors</th>
  <th>Last error</th></tr></thead><tbody id="sinks"></tbody></table></div>
 <h3>Store</h3><p><label for="store-meter">Bytes against the budget</label>
  <meter id="store-meter" min="0" value="0"></meter> <span id="store-text"></span></p>
 <h3>Removed sinks' backlog</h3>
 <div class="scroll"><table><thead><tr><th>Sink</th><th>Waiting</th></tr></thead>
 <tbody id="removed-sinks"></tbody></table></div>
</section>
<section id="page-devices" hidden><h2>Devices</h2>
 <h3>Modbus devices</h3><div class="scroll"><table><thead><tr><th>Device</th><th>Source</th>
  <th>State</th><th>Address</th><th>Unit</th><th>Poll latency (mean)</th><th>Error rate</th>
  <th>Last good poll</th><th>Last error</th></tr></thead><tbody id="devices"></tbody></table></div>
 <h3>Serial ports</h3><div class="scroll"><table><thead><tr><th>Source</th><th>Port</th>
  <th>State</th><th>Counters</th><th>Last error</th></tr></thead><tbody id="ports"></tbody></table>
 </div>
</section>
<section id="page-dead" hidden><h2>Dead letters</h2>
 <p class="viewer-note warn" hidden>You are signed in as a viewer: replay and purge need an operator.</p>
 <p class="row"><span id="dead-count"></span>
  <button id="dead-replay-all" type="button">Replay all</button>
  <button id="dead-purge-all" type="button">Purge all...</button>
  <span id="dead-all-outcome" role="status"></span></p>
 <div class="scroll"><table><thead><tr><th>No.</th><th>Failed at</th><th>Topic</th><th>Where</th>
  <th>Reason</th><th>Size</th><th><span class="sr">Action</span></th></tr></thead>
  <tbody id="dead"></tbody></table></div>
 <div id="dead-one" class="panel" hidden><h3 id="dead-title" tabindex="-1"></h3>
  <dl id="dead-fields" class="facts"></dl><h4 id="dead-kind"></h4><pre id="dead-content"></pre>
  <p id="dead-all" hidden><a id="dead-download" download>Download all of it</a></p>
  <p class="row"><button id="dead-replay" type="button">Replay</button>
   <button id="dead-purge" type="button">Purge...</button>
   <span id="dead-outcome" role="status" tabindex="-1"></span></p></div>
</section>
<section id="page-alerts" hidden><h2>Alerts</h2>
 <h3>Active</h3><div class="scroll"><table><thead><tr><th>State</th><th>Subject</th><th>What</th>
  <th>Fired</th><th>Rule</th></tr></thead><tbody id="alerts-active"></tbody></table></div>
 <h3>Recent</h3><div class="scroll"><table><thead><tr><th>State</th><th>Subject</th><th>What</th>
  <th>Fired</th><th>Resolved</th></tr></thead><tbody id="alerts-recent"></tbody></table></div>
</section>
</main>
</body></html>
"""

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Edge Stream - log in</title>
<link rel="stylesheet" href="static/console.css">
<link rel="icon" href="static/favicon.svg" type="image/svg+xml">
<script src="static/login.js" defer></script>
</head><body>
<h1>Edge Stream</h1>
<form id="login" method="post" action="login" class="login">
 <label for="username">User name</label>
 <input id="username" name="username" autocomplete="username" required autofocus>
 <label for="password">Password</label>
 <input id="password" name="password" type="password" autocomplete="current-password" required>
 <button type="submit">Log in</button>
 <div id="error" class="bad" role="alert"></div>
</form>
</body></html>
"""

# The login page after a failed form login (POST /login without script answers 303 to
# `login?failed=1`): the same page with the error in it, which needs no script
LOGIN_FAILED = "Wrong user name or password."
LOGIN_FAILED_PAGE = LOGIN_PAGE.replace(
    '<div id="error" class="bad" role="alert"></div>',
    f'<div id="error" class="bad" role="alert">{LOGIN_FAILED}</div>',
)
