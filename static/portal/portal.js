// DataFlare Portal shell: mark the current nav link, auto-submit the language switcher.
(function () {
  "use strict";
  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }
  ready(function () {
    var path = window.location.pathname;
    var best = null, bestLen = -1;
    document.querySelectorAll(".df-nav a").forEach(function (a) {
      var href = a.getAttribute("href") || "";
      var exact = a.getAttribute("data-df-nav") === "exact";
      var match = exact ? path === href : (href !== "/" && path.indexOf(href) === 0);
      if (match && href.length > bestLen) { best = a; bestLen = href.length; }
    });
    if (best) { best.setAttribute("aria-current", "page"); }
    document.querySelectorAll("select[data-df-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  });
})();
