"""The console's HTML documents. They carry no script and no style of their own: the
Content-Security-Policy allows only the files of gateway/web/static/ (status.js, login.js,
console.css), served at /static/NAME."""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Edge Stream</title>
<link rel="stylesheet" href="static/console.css">
<script src="static/status.js" defer></script>
</head><body>
<h1>Edge Stream <span id="gw" class="muted"></span>
 <span id="who" class="muted"></span> <button id="logout" type="button" hidden>Log out</button></h1>
<div id="summary" class="muted">loading...</div>
<div id="alert" class="bad"></div>
<h2>Sources</h2><table id="sources"></table>
<h2>Sinks</h2><table id="sinks"></table>
<h2>Routes</h2><table id="routes"></table>
<h2>Recent dead letters</h2><table id="dead"></table>
</body></html>
"""

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Edge Stream - log in</title>
<link rel="stylesheet" href="static/console.css">
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
