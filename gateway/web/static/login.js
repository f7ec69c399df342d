// The login form: POST /login as JSON, then the status page. Without script the form
// posts itself and the server answers 303 to the page, or back here (login?failed=1,
// which shows the error) after a wrong password.
"use strict";
document.getElementById("login").addEventListener("submit", async event => {
  event.preventDefault();
  const error = document.getElementById("error");
  error.textContent = "";
  const body = JSON.stringify({
    username: document.getElementById("username").value,
    password: document.getElementById("password").value,
  });
  try {
    const answer = await fetch("login", {method: "POST", body,
      headers: {"Content-Type": "application/json"}, credentials: "same-origin"});
    // back to the page asked for: its view is the part after # (kept through /login)
    if (answer.ok) { location.href = "./" + location.hash; return; }
    if (answer.status === 429) error.textContent = "Too many failed logins; wait a little.";
    else error.textContent = "Wrong user name or password.";
  } catch (e) {
    error.textContent = "Cannot reach the gateway: " + e;
  }
});
