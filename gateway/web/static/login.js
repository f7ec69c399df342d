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
    // 409: no account is set up, the console is open (it asks for no login)
    if (answer.ok || answer.status === 409) { location.href = "./" + location.hash; return; }
    if (answer.status === 429) error.textContent = "Too many failed logins; wait a little.";
    else if (answer.status === 401) error.textContent = "Wrong user name or password.";
    // anything else is not about the password (the users file cannot be read: 503, no
    // account left beyond localhost: 403): the gateway's own words, as text
    else error.textContent = await said(answer);
  } catch (e) {
    error.textContent = "Cannot reach the gateway: " + e;
  }
});

async function said(answer) {
  const text = (await answer.text()).trim();
  try {
    const errors = JSON.parse(text).errors;
    if (Array.isArray(errors) && errors.length) return errors.join("; ");
  } catch (e) { /* not JSON: the text itself */ }
  return text || `The gateway answered ${answer.status}.`;
}
