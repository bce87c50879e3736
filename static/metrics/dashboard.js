/* The statistics dashboard: draws the server-built plotly figures, then refreshes them, the KPI
   cards, the stage table and the freshness line from the dashboard-data endpoint without reload. */
(function () {
  "use strict";
  var root = document.getElementById("df-dashboard");
  if (!root) { return; }
  var figures = JSON.parse(document.getElementById("df-figures").textContent);
  var configs = JSON.parse(document.getElementById("df-plot-configs").textContent);
  var kind = (document.getElementById("f-chart") || {}).value || "line";

  // Charts follow the portal's theme (the admin's light/dark/auto switch sets html[data-theme]):
  // text, grid and axis lines take the admin's own colour variables, so they read in both themes.
  function cssVar(name, fallback) {
    var v = window.getComputedStyle(document.documentElement).getPropertyValue(name);
    return (v && v.trim()) || fallback;
  }
  function theme() {
    return {
      fg: cssVar("--body-fg", "#222"),
      quiet: cssVar("--body-quiet-color", "#555"),
      grid: cssVar("--hairline-color", "#e8e8e8"),
      line: cssVar("--border-color", "#ccc"),
      bg: cssVar("--body-bg", "#fff")
    };
  }
  function themed(layout) {
    var t = theme();
    var out = JSON.parse(JSON.stringify(layout || {}));
    out.font = Object.assign({}, out.font, {color: t.fg});
    if (out.title) { out.title.font = Object.assign({}, out.title.font, {color: t.fg}); }
    out.legend = Object.assign({}, out.legend, {font: {color: t.fg}});
    out.hoverlabel = Object.assign({}, out.hoverlabel, {bgcolor: t.bg, font: {color: t.fg}, bordercolor: t.line});
    Object.keys(out).forEach(function (k) {
      if (/^[xy]axis\d*$/.test(k)) {
        out[k] = Object.assign({}, out[k], {gridcolor: t.grid, linecolor: t.line, zerolinecolor: t.line});
      }
    });
    (out.annotations || []).forEach(function (a) { a.font = Object.assign({}, a.font, {color: t.quiet}); });
    return out;
  }

  function draw(figs, first) {
    Object.keys(figs).forEach(function (name) {
      var el = document.getElementById("df-chart-" + name);
      if (!el) { return; }
      var fig = figs[name];
      if (name === "history") { applyKind(fig); }
      (first ? Plotly.newPlot : Plotly.react)(el, fig.data, themed(fig.layout), configs[name] || {});
    });
  }

  function applyKind(fig) {
    fig.data.forEach(function (trace) {
      if (kind === "bar") { trace.type = "bar"; delete trace.mode; }
      else { trace.type = "scatter"; trace.mode = "lines+markers"; }
    });
  }

  function text(el, value) { if (el) { el.textContent = value; } }

  function renderKpis(cards) {
    cards.forEach(function (card) {
      var box = root.querySelector('[data-kpi="' + card.key + '"]');
      if (!box) { return; }
      text(box.querySelector('[data-role="value"]'), card.display);
      var delta = box.querySelector('[data-role="delta"]');
      if (delta) {
        delta.className = "df-kpi-delta df-trend-" + card.trend;
        delta.textContent = card.delta_display ? card.delta_display + " (" + card.previous_display + ")" : "";
      }
    });
  }

  // Comma thousands separators in every language, as the server renders them (core "grouped" filter).
  var numbers = new Intl.NumberFormat("en-US", {maximumFractionDigits: 2});
  function fmt(v) {
    if (v === null || v === undefined) { return "—"; }
    return typeof v === "number" ? numbers.format(v) : String(v);
  }

  function renderStages(rows) {
    var body = root.querySelector("#df-stage-table tbody");
    if (!body || !rows.length) { return; }
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      th.scope = "row"; th.textContent = r.stage_label || r.stage_template || "—"; tr.appendChild(th);
      [r.batches, r.batches_failed, r.records_in, r.records_out, r.records_filtered, r.records_failed,
       r.success_rate === null ? null : Math.round(r.success_rate * 100) + "%", r.avg_batch_ms, r.requests,
       r.tokens, r.retry_tokens, r.p95_latency_ms].forEach(function (v) {
        var td = document.createElement("td"); td.textContent = fmt(v); tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function renderFreshness(data) {
    var p = document.getElementById("df-freshness");
    if (!p) { return; }
    p.classList.toggle("df-lagging", !!data.lagging);
    var head = data.data_as_of ? p.dataset.labelAsof + " " + (data.data_as_of_display || data.data_as_of) : p.dataset.labelNone;
    if (data.data_as_of && data.lagging) { head += " — " + p.dataset.labelLagging; }
    text(p.querySelector('[data-role="fresh"]'), head);
  }

  function refresh() {
    fetch(root.dataset.dataUrl, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) {
        figures = data.figures;
        draw(figures, false);
        renderKpis(data.kpis);
        renderStages(data.stages);
        renderFreshness(data);
        root.dataset.refreshes = String(parseInt(root.dataset.refreshes || "0", 10) + 1);
      })
      .catch(function () { root.dataset.refreshErrors = String(parseInt(root.dataset.refreshErrors || "0", 10) + 1); });
  }

  function setKind(next) {
    kind = next;
    var hidden = document.getElementById("f-chart");
    if (hidden) { hidden.value = next; }
    root.querySelectorAll(".df-kind").forEach(function (b) {
      b.setAttribute("aria-pressed", b.dataset.kind === next ? "true" : "false");
    });
    var url = new URL(window.location.href);
    url.searchParams.set("chart", next);
    window.history.replaceState(null, "", url);
    var data = new URL(root.dataset.dataUrl, window.location.href);
    data.searchParams.set("chart", next);
    root.dataset.dataUrl = data.pathname + data.search;
    var fig = figures.history;
    applyKind(fig);
    Plotly.react(document.getElementById("df-chart-history"), fig.data, themed(fig.layout), configs.history || {});
  }

  function start() {
    draw(figures, true);
    root.querySelectorAll(".df-kind").forEach(function (b) {
      b.addEventListener("click", function () { setKind(b.dataset.kind); });
    });
    // Redraw in the new colours when the theme switch is used or the system scheme changes.
    var redraw = function () { draw(figures, false); root.dataset.theme = document.documentElement.dataset.theme || "auto"; };
    new MutationObserver(redraw).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});
    if (window.matchMedia) {
      var mq = window.matchMedia("(prefers-color-scheme: dark)");
      if (mq.addEventListener) { mq.addEventListener("change", redraw); }
    }
    var seconds = parseInt(root.dataset.refreshSeconds, 10) || 60;
    window.setInterval(refresh, seconds * 1000);
  }

  if (window.Plotly) { start(); } else { window.addEventListener("load", start); }
})();
