// Live progress on a job page: reads the job's server-sent events (GET /jobs/<id>/events, the same stream
// the API documents) and updates the progress bar, the status and the event list; when the job has
// finished, the page reloads once to show its metrics, preview and artifacts. Without JavaScript the page
// still shows the state at load time.
"use strict";
(function () {
  var box = document.getElementById("state");
  if (!box || box.dataset.terminal === "true" || !window.EventSource) return;
  var bar = document.getElementById("progress");
  var text = document.getElementById("progress-text");
  var status = document.getElementById("status");
  var list = document.getElementById("events");
  var first = true;

  function log(line) {
    if (first) { list.textContent = ""; first = false; }
    var item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + "  " + line;
    list.appendChild(item);
    while (list.children.length > 200) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }
  function setStatus(value) {
    var badge = document.createElement("span");
    badge.className = "badge s-" + value;
    badge.textContent = value;
    status.textContent = "";
    status.appendChild(badge);
  }
  var source = new EventSource(box.dataset.events);
  source.addEventListener("progress", function (e) {
    var p = JSON.parse(e.data);
    var fraction = p.status === "succeeded" ? 1 : (p.fraction || 0);
    bar.value = fraction;
    var label = Math.round(100 * fraction) + " %";
    if (p.stage) label += " · " + p.stage;
    if (p.total) label += " (" + p.current + " / " + p.total + ")";
    text.textContent = label;
    log("progress " + label + (p.message ? " " + p.message : ""));
  });
  source.addEventListener("state", function (e) {
    var job = JSON.parse(e.data);
    setStatus(job.status);
    log("state " + job.status + (job.error ? ": " + job.error : ""));
    if (["succeeded", "failed", "canceled"].indexOf(job.status) >= 0) {
      if (job.status === "succeeded") { bar.value = 1; text.textContent = "100 % · done"; }
      source.close();
      box.dataset.terminal = "true";
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
      setTimeout(function () { window.location.reload(); }, 800);
    }
  });
  source.onerror = function () { log("stream interrupted; retrying"); };
})();
