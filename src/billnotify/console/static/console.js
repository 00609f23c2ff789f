// billnotify console: live updates over server-sent events (no inline script: CSP).
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-live-url");
  var status = document.getElementById("live-status");
  if (!url || !window.EventSource) {
    if (status) { status.textContent = ""; }
    return;
  }
  var rows = document.getElementById("event-rows");
  var follow = rows && !rows.hasAttribute("data-filtered");
  var shown = {};
  if (follow) {
    url += "?after=" + encodeURIComponent(rows.getAttribute("data-after") || "0");
  }
  var source = new EventSource(url);
  source.addEventListener("open", function () { status.textContent = "live"; });
  source.addEventListener("error", function () { status.textContent = "reconnecting…"; });
  source.addEventListener("overview", function (message) {
    var values = JSON.parse(message.data);
    var marked = document.querySelectorAll("[data-live]");
    for (var i = 0; i < marked.length; i++) {
      var key = marked[i].getAttribute("data-live");
      if (Object.prototype.hasOwnProperty.call(values, key)) {
        marked[i].textContent = values[key];
      }
    }
  });
  source.addEventListener("events", function (message) {
    if (!follow) { return; }
    var events = JSON.parse(message.data);
    var none = rows.querySelector("tr.none");
    if (none && events.length) { none.remove(); }
    events.forEach(function (e) {
      if (shown[e.seq]) { return; }
      shown[e.seq] = true;
      var tr = document.createElement("tr");
      tr.className = "new";
      [String(e.seq), e.time, e.type, e.source, e.subject].forEach(function (text, i) {
        var td = document.createElement("td");
        if (i === 0) { td.className = "num"; }
        td.textContent = text;
        tr.appendChild(td);
      });
      var td = document.createElement("td");
      var a = document.createElement("a");
      a.href = "/events/" + encodeURIComponent(e.id);
      a.textContent = e.id;
      td.appendChild(a);
      tr.appendChild(td);
      rows.insertBefore(tr, rows.firstChild);
    });
    while (rows.children.length > 500) { rows.removeChild(rows.lastChild); }
  });
})();
