// The console's only script: new log lines as they are written, over server-sent events.
// Every page works without it; the lines already on the page came from the server.
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
