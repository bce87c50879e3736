// Model config form: the OpenAI-compatible fieldset only shows when that protocol is chosen.
(function () {
  "use strict";
  function sync(select) {
    var openai = select.value === "openai";
    document.querySelectorAll("fieldset.df-openai").forEach(function (fieldset) {
      fieldset.hidden = !openai;
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var select = document.getElementById("id_protocol");
    if (!select) return;
    sync(select);
    select.addEventListener("change", function () { sync(select); });
  });
})();
