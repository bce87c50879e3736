// Run detail: refresh stage progress from the run's progress.json every 2 s while the run is active.
(function () {
  "use strict";
  function fmt(n) { return (n === null || n === undefined) ? "\u2014" : Number(n).toLocaleString(); }
  function setText(el, text) { if (el && el.textContent !== String(text)) { el.textContent = text; } }
  function apply(root, data) {
    setText(document.getElementById("df-run-status"), data.status_label);
    var badge = document.getElementById("df-run-status");
    if (badge) { badge.className = "df-badge df-badge-" + data.badge; }
    setText(document.getElementById("df-run-reason"), data.status_reason || "");
    setText(document.getElementById("df-run-in"), fmt(data.records_in));
    setText(document.getElementById("df-run-out"), fmt(data.records_out));
    setText(document.getElementById("df-run-filtered"), fmt(data.records_filtered));
    setText(document.getElementById("df-run-failed"), fmt(data.records_failed));
    setText(document.getElementById("df-run-rate"), fmt(data.records_per_second));
    setText(document.getElementById("df-run-tokens"), fmt(data.prompt_tokens) + " / " + fmt(data.completion_tokens));
    setText(document.getElementById("df-run-retry-tokens"), fmt(data.retry_tokens));
    data.stages.forEach(function (s) {
      var row = root.querySelector('tr[data-stage="' + s.id + '"]');
      if (!row) { return; }
      var bar = row.querySelector(".df-progress-bar");
      if (bar) { bar.style.width = s.percent + "%"; }
      var prog = row.querySelector(".df-progress");
      if (prog) { prog.setAttribute("aria-valuenow", Math.round(s.percent)); }
      setText(row.querySelector(".df-progress-text"), Math.round(s.percent) + "%");
      var status = row.querySelector('[data-field="status_label"]');
      if (status) { status.className = "df-badge df-badge-" + s.badge; setText(status, s.status_label); }
      setText(row.querySelector('[data-field="batches"]'), s.batches_done + "/" + (s.batches_total === null ? "?" : s.batches_total));
      ["records_in", "records_out", "records_filtered", "records_failed"].forEach(function (f) {
        setText(row.querySelector('[data-field="' + f + '"]'), fmt(s[f]));
      });
      setText(row.querySelector('[data-field="records_per_second"]'), fmt(s.records_per_second));
      setText(row.querySelector('[data-field="eta_seconds"]'), s.eta_seconds === null ? "\u2014" : s.eta_seconds);
      setText(row.querySelector('[data-field="last_error"]'), (s.last_error || "").slice(0, 200));
    });
  }
  function start() {
    var root = document.getElementById("df-run");
    if (!root) { return; }
    var url = root.getAttribute("data-progress-url");
    var wasActive = root.getAttribute("data-active") === "1";
    function tick() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          apply(root, data);
          // Reload once when the run ends or changes state, so the reason and the actions match it.
          if ((wasActive && !data.active) || data.status !== root.getAttribute("data-status")) { window.location.reload(); return; }
          if (data.active) { setTimeout(tick, 2000); }
        })
        .catch(function () { setTimeout(tick, 5000); });
    }
    if (wasActive) { setTimeout(tick, 2000); }
  }
  if (document.readyState !== "loading") { start(); } else { document.addEventListener("DOMContentLoaded", start); }
})();
