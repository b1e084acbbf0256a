// The console's only script: new log lines as they are written, over server-sent events,
// and the hop back to an app after its login. Every page works without it; the lines
// already on the page came from the server, and the hop is a link to follow.
(function () {
  "use strict";
  // A link, not a redirect, because a redirect to another site after the login form is
  // what the page's `form-action 'self'` forbids the browser to follow.
  var handoff = document.getElementById("handoff");
  if (handoff) {
    window.location.replace(handoff.getAttribute("href"));
  }
})();
(function () {
  "use strict";
  var live = document.getElementById("live-log");
  if (!live || !window.EventSource) {
    return;
  }
  var state = document.getElementById("live-state");
  var source = new EventSource(live.getAttribute("data-stream"));
  source.onopen = function () {
    if (state) { state.textContent = "live"; }
  };
  source.onmessage = function (event) {
    var line;
    try { line = JSON.parse(event.data); } catch (e) { return; }
    var row = document.createElement("div");
    if (line.stream === "stderr") { row.className = "stderr"; }
    // Text, never markup: a log line is whatever the app wrote.
    row.textContent = line.line;
    live.appendChild(row);
    while (live.childNodes.length > 2000) { live.removeChild(live.firstChild); }
    live.scrollTop = live.scrollHeight;
  };
  source.onerror = function () {
    if (state) { state.textContent = "reconnecting…"; }
  };
})();
