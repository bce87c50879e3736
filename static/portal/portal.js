// DataFlare Portal shell: mark the current nav link. (The language switcher has its own submit
// button: changing on every "change" event reloaded the page on the first arrow key.)
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
  });
})();
