"""Helpers for the browser tests: the untranslated-text check and the page-width measure.

The untranslated check reads what a person sees on a Chinese page — visible text, the page title,
the title, input-hint, aria-label and alt attributes, button values and the options of visible
lists — and reports every English word that is not data. What counts as data is decided by the
page and by the test, not guessed from the words:

- text inside an element marked `translate="no"` (the HTML attribute that tells translation tools
  "this is a name, a record, a code") or inside `<code>`, `<kbd>`, `<samp>`, `<pre>`, `<var>`;
- the values of form fields (what the operator typed);
- the exact strings the test itself entered (names of the things it created, record text): the
  Django admin renders object names in places we do not template (change-list cells, breadcrumbs,
  "was added successfully" messages, autocomplete boxes);
- words in capitals (acronyms such as IP and JSON, constants such as gRPC's UNAVAILABLE), and
  identifier-shaped tokens (`snake_case`, `a.b`, `v2`, `AUTH_MODE=none`, JSON paths `$.rules[0]`,
  placeholders `out/{lang}.jsonl`): codes;
- a short list of names that stay in Latin letters in Chinese too (product and protocol names,
  units): `LATIN_NAMES` below.

Everything else in Latin letters on a zh page is an untranslated string.
"""

from __future__ import annotations

import re

__all__ = ["LATIN_NAMES", "page_width", "untranslated_on_page"]

# Names written in Latin letters in Chinese text as well. Keep this short: a word belongs here only
# if a Chinese operator would see it untranslated in any Chinese product (names, acronyms, units).
LATIN_NAMES = frozenset(
    # names
    ["DataFlare", "PostgreSQL", "Redis", "Celery", "beat", "Beat", "KServe", "gRPC", "Triton", "MLServer", "SQLite"]
    + ["Django"]
    + [
        "OpenAI",
        "OpenID",
        "Connect",
        "MySQL",
        "MariaDB",
        "Schema",
        "ReDoc",
        "Swagger",
        "MinHash",
        "Jaccard",
        "Unicode",
        "Token",
        "Tokens",
        "Parquet",
        "WebAssembly",
        "wasmtime",
    ]
    # units
    + ["ms", "s", "min", "h", "d", "px", "pp"]
)

_COLLECT = r"""
(data) => {
  const SKIP = new Set(["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE", "CODE", "KBD", "SAMP", "PRE", "VAR", "TEXTAREA"]);
  const out = [];
  const isData = (el) => !!(el.closest && el.closest('[translate="no"], code, kbd, samp, pre, var'));
  const visible = (el) => {
    if (!el || !el.getClientRects || !el.getClientRects().length) { return false; }
    const s = getComputedStyle(el);
    return s.visibility !== "hidden" && s.display !== "none" && parseFloat(s.opacity || "1") > 0;
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      const el = node.parentElement;
      if (!el || SKIP.has(el.tagName) || isData(el)) { return NodeFilter.FILTER_REJECT; }
      if (el.closest(".df-visually-hidden")) { return NodeFilter.FILTER_ACCEPT; }  // for screen readers
      if (el.tagName === "OPTION" || el.tagName === "OPTGROUP") { return NodeFilter.FILTER_REJECT; }
      if (!node.textContent.trim() || !visible(el)) { return NodeFilter.FILTER_REJECT; }
      return NodeFilter.FILTER_ACCEPT;
    },
  });
  const where = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : "");
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    out.push([n.textContent, where(n.parentElement)]);
  }
  out.push([document.title, "title"]);
  for (const el of document.querySelectorAll("[title], [placeholder], [aria-label], [alt], [data-title]")) {
    if (isData(el)) { continue; }
    // Toolbar buttons (plotly's modebar) show their data-title on hover.
    for (const a of ["title", "placeholder", "aria-label", "alt", "data-title"]) {
      const value = el.getAttribute(a);
      if (value && value.trim()) { out.push([value, where(el) + "[" + a + "]"]); }
    }
  }
  for (const el of document.querySelectorAll('input[type="submit"], input[type="button"], input[type="reset"]')) {
    if (visible(el) && !isData(el)) { out.push([el.value, where(el) + "[value]"]); }
  }
  // The options of a list the operator can open (a list hidden behind a widget, such as an
  // autocomplete's original select, shows its choices through that widget instead).
  for (const sel of document.querySelectorAll("select")) {
    if (!visible(sel) || isData(sel) || sel.classList.contains("select2-hidden-accessible")) { continue; }
    for (const o of sel.options) {
      if (!isData(o) && o.textContent.trim()) { out.push([o.textContent, where(sel) + " option"]); }
    }
  }
  return out;
}
"""

_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
# Identifier-shaped tokens (snake_case, dotted, with digits, =, /, ://) are codes, not words.
_TOKEN = re.compile(r"[A-Za-z0-9_.:/=@#%+${}\[\]\-'’]+")


def _english_words(text: str) -> list[str]:
    words = []
    for token in _TOKEN.findall(text):
        token = token.strip(".:/-'’#%+=@")
        if not token or not re.search(r"[A-Za-z]", token):
            continue
        if re.search(r"[_0-9=/@${}\[]|\w\.\w|://", token) and token not in LATIN_NAMES:
            continue  # a code: key_name, v2, a.b, AUTH_MODE=none, 127.0.0.1:8001, $.rules[0], out/{lang}.jsonl
        for word in _WORD.findall(token):
            if word not in LATIN_NAMES and not (len(word) > 1 and word.isupper()):
                words.append(word)
    return words


def untranslated_on_page(page, data: list[str] = ()) -> list[str]:
    """Every piece of visible text on the page that still has English words once data is set aside.

    Returns "where: text" lines (empty when the page is fully translated).
    """
    found = []
    # Longest first, so "console pipeline" goes before "console".
    known = sorted({d for d in data if d}, key=len, reverse=True)
    for text, where in page.evaluate(_COLLECT, list(known)):
        rest = text
        for value in known:
            rest = rest.replace(value, " ")
        words = _english_words(rest)
        if words:
            found.append(f"{where}: {' '.join(text.split())[:160]!r} -> {' '.join(words)}")
    return found


def page_width(page) -> dict:
    """The page's scroll width against the window: {"scroll": px, "window": px}."""
    return page.evaluate("() => ({scroll: document.documentElement.scrollWidth, window: window.innerWidth})")
