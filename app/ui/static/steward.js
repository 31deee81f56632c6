// Steward dashboard: live progress of a model's jobs (polls its jobs while any is queued or
// running; stops when none is). No framework, no third-party code.
(function () {
  "use strict";
  function live(table) {
    var url = table.getAttribute("data-poll");
    var active = function (s) { return s === "queued" || s === "running"; };
    function apply(items) {
      var any = false;
      items.forEach(function (j) {
        var row = table.querySelector('tr[data-job="' + j.id + '"]');
        if (active(j.status)) { any = true; }
        if (!row) { return; }
        var bar = row.querySelector("progress");
        if (bar) { bar.value = j.progress; }
        var pct = row.querySelector(".pct");
        if (pct) { pct.textContent = Math.round(j.progress * 100) + "%"; }
        var cell = row.querySelector(".result");
        if (cell && !cell.textContent.trim()) {
          if (j.result && j.result.version) {
            var a = document.createElement("a");
            a.href = table.getAttribute("data-versions") + j.result.version;
            a.textContent = "v" + j.result.version;
            cell.appendChild(a);
          } else if (j.error && j.error.message) {
            cell.textContent = j.error.message;
          }
        }
        var badge = row.querySelector(".status .badge");
        if (badge && badge.textContent !== j.status) {
          badge.textContent = j.status;
          badge.className = "badge " + j.status;
        }
      });
      return any;
    }
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : { items: [] }; })
        .then(function (body) { if (apply(body.items || [])) { setTimeout(tick, 1500); } })
        .catch(function () { setTimeout(tick, 5000); });
    }
    var initial = Array.prototype.some.call(table.querySelectorAll(".status .badge"), function (b) {
      return active(b.textContent.trim());
    });
    if (initial) { setTimeout(tick, 1000); }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var t = document.getElementById("jobs");
    if (t && t.getAttribute("data-poll")) { live(t); }
  });
})();
