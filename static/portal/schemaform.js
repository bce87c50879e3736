// JSON-Schema forms (dataflare_portal/core/schemaform.py): build fields from the schema of the chosen
// kind, keep the posted textarea in sync, place server errors at their JSON path. No outside assets.
(function () {
  "use strict";
  var IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
  var uid = 0;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined || attrs[k] === false) { return; }
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k] === true ? "" : attrs[k]); }
    });
    (children || []).forEach(function (c) { if (c) { node.appendChild(c); } });
    return node;
  }
  function fmt(template, params) {
    return String(template).replace(/%\((\w+)\)s/g, function (_, k) { return params[k] === undefined ? "" : String(params[k]); });
  }
  function join(path, part) {
    if (typeof part === "number") { return path + "[" + part + "]"; }
    return IDENT.test(part) ? path + "." + part : path + "['" + part + "']";
  }
  function humanize(key) {
    var s = String(key).replace(/_/g, " ");
    return s.charAt(0).toUpperCase() + s.slice(1);
  }
  function clone(v) { return v === undefined ? undefined : JSON.parse(JSON.stringify(v)); }
  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }

  // A tagged union: array items whose variants are told apart by a constant property ("type", "op").
  function variants(schema) {
    if (!schema || !Array.isArray(schema.oneOf)) { return null; }
    var tag = schema["x-discriminator"];
    if (!tag) { return null; }
    var out = {};
    schema.oneOf.forEach(function (v) {
      var c = v.properties && v.properties[tag] && v.properties[tag].const;
      if (c !== undefined) { out[c] = v; }
    });
    return { tag: tag, byName: out };
  }
  // A reference: oneOf [integer id, string name] — offered as a text box with suggestions.
  function isReference(schema) {
    if (!schema || !Array.isArray(schema.oneOf) || schema.oneOf.length !== 2) { return false; }
    var types = schema.oneOf.map(function (s) { return s.type; }).sort().join(",");
    return types === "integer,string";
  }
  function defaultsOf(schema) {
    var out = {};
    Object.keys((schema && schema.properties) || {}).forEach(function (k) {
      var p = schema.properties[k];
      if (p && p.default !== undefined) { out[k] = clone(p.default); }
      else if (p && p.const !== undefined) { out[k] = p.const; }
    });
    return out;
  }

  function Editor(root) {
    this.root = root;
    var specScript = root.querySelector("script[type='application/json']");
    this.spec = JSON.parse(specScript.textContent);
    this.S = this.spec.strings;
    // The textarea inside: a row added by an inline formset has its ids renumbered, not data-target.
    this.textarea = root.querySelector("textarea.df-sf-raw");
    root.setAttribute("data-target", this.textarea.id);
    specScript.id = this.textarea.id + "-schema";
    this.formBox = root.querySelector(".df-sf-form");
    var id = this.textarea.id;
    var kindName = root.getAttribute("data-kind-field");
    var cut = id.lastIndexOf("-");
    var prefix = cut >= 0 ? id.slice(0, cut + 1) : "id_";
    this.kindSelect = document.getElementById(prefix + kindName) || document.getElementById("id_" + kindName);
    this.errors = this.spec.errors || [];
    var self = this;
    if (this.kindSelect) {
      this.kindSelect.addEventListener("change", function () { self.onKind(); });
    }
    this.textarea.addEventListener("change", function () { self.fromText(); });
    this.kind = this.kindSelect ? this.kindSelect.value : "";
    this.fromText(true);
    this.applyHide();
  }

  // Parts of the page that do not apply to a kind (a password for files) are hidden, not just ignored.
  Editor.prototype.applyHide = function () {
    var extras = this.spec.extras || {};
    var all = {};
    Object.keys(extras).forEach(function (k) { (extras[k].hide || []).forEach(function (c) { all[c] = true; }); });
    var hide = (extras[this.kind] || {}).hide || [];
    var form = this.root.closest("form") || document;
    Object.keys(all).forEach(function (cls) {
      form.querySelectorAll("." + cls).forEach(function (node) { node.hidden = hide.indexOf(cls) >= 0; });
    });
  };

  Editor.prototype.schema = function () { return this.spec.schemas[this.kind] || null; };

  Editor.prototype.fromText = function (initial) {
    var raw = this.textarea.value.trim();
    var value;
    this.clearRawError();
    if (raw === "") {
      value = defaultsOf(this.schema());
    } else {
      try { value = JSON.parse(raw); } catch (e) { this.rawError(fmt(this.S.badJson, { error: e.message })); return; }
    }
    this.value = isObj(value) ? value : {};
    this.render();
    if (!initial || raw === "") { this.sync(); }
  };

  Editor.prototype.onKind = function () {
    var schema = this.spec.schemas[this.kindSelect.value] || null;
    var keep = {};
    var old = this.value || {};
    // Keep what still applies to the new kind; start the rest from its defaults.
    if (schema && schema.properties) {
      keep = defaultsOf(schema);
      Object.keys(old).forEach(function (k) { if (schema.properties[k]) { keep[k] = old[k]; } });
    }
    this.kind = this.kindSelect.value;
    this.value = keep;
    this.errors = [];
    this.render();
    this.sync();
    this.applyHide();
    this.root.dispatchEvent(new CustomEvent("df-schemaform:kind", { bubbles: true, detail: { kind: this.kind } }));
  };

  Editor.prototype.sync = function () {
    this.textarea.value = JSON.stringify(this.value, null, 2);
  };
  Editor.prototype.rawError = function (message) {
    this.clearRawError();
    var p = el("p", { class: "df-sf-error", role: "alert", text: message });
    p.setAttribute("data-raw-error", "");
    this.textarea.parentNode.insertBefore(p, this.textarea);
    this.textarea.setAttribute("aria-invalid", "true");
  };
  Editor.prototype.clearRawError = function () {
    var old = this.root.querySelector("[data-raw-error]");
    if (old) { old.remove(); }
    this.textarea.removeAttribute("aria-invalid");
  };

  Editor.prototype.render = function () {
    var box = this.formBox;
    var focusedPath = document.activeElement && document.activeElement.getAttribute("data-path");
    box.textContent = "";
    var schema = this.schema();
    if (!schema) {
      box.appendChild(el("p", { class: "df-sf-help", text: this.S.noSchema }));
      return;
    }
    var extras = (this.spec.extras || {})[this.kind];
    if (extras && extras.help) { box.appendChild(el("p", { class: "df-sf-help df-sf-kindhelp", text: extras.help })); }
    var self = this;
    var obj = this.objectFields(schema, this.value, "$", function (v) { self.value = v; });
    if (!obj.childNodes.length) { box.appendChild(el("p", { class: "df-sf-help", text: this.S.noSettings })); }
    box.appendChild(obj);
    this.placeErrors();
    if (focusedPath) {
      var again = box.querySelector('[data-path="' + focusedPath.replace(/"/g, '\\"') + '"]');
      if (again) { again.focus(); }
    }
  };

  Editor.prototype.placeErrors = function () {
    var box = this.formBox;
    var self = this;
    this.errors.forEach(function (err) {
      var target = null;
      var path = err.path;
      // The deepest rendered field on the error's path (an error about a missing key lands on its box).
      while (path && !target) {
        target = box.querySelector('[data-path="' + path.replace(/"/g, '\\"') + '"]');
        if (target || path === "$") { break; }
        path = path.replace(/(\[[^\]]*\]|\.[^.[]+)$/, "");
      }
      var msg = el("p", { class: "df-sf-error", id: "df-sf-err-" + (++uid), role: "alert" });
      if (path !== err.path) { msg.appendChild(el("code", { text: err.path })); msg.appendChild(document.createTextNode(": ")); }
      msg.appendChild(document.createTextNode(err.message));
      if (target && target.matches("input, select, textarea")) {
        target.setAttribute("aria-invalid", "true");
        target.setAttribute("aria-describedby", msg.id);
        target.parentNode.appendChild(msg);
      } else if (target && target.tagName === "FIELDSET") {
        // A list or a group (a missing "rules"): the message goes under its legend.
        target.setAttribute("aria-describedby", msg.id);
        target.insertBefore(msg, target.querySelector("legend") ? target.querySelector("legend").nextSibling : target.firstChild);
      } else {
        box.insertBefore(msg, box.firstChild);
      }
    });
    // Each message now sits at its field: the admin's list of the same messages above the whole form
    // (JSON paths such as $.rules) only repeats them.
    var row = this.root.closest(".form-row");
    var list = row && row.querySelector(":scope > ul.errorlist");
    if (list && this.errors.length) { list.hidden = true; }
    // Errors are shown once; editing clears them.
    box.addEventListener("input", function () { self.errors = []; }, { once: true });
  };

  Editor.prototype.field = function (label, input, help, required) {
    var id = input.id || ("df-sf-" + (++uid));
    input.id = id;
    var lab = el("label", { for: id, text: label });
    if (required) { lab.appendChild(el("span", { class: "df-sf-req", text: " *", title: this.S.required })); }
    var row = el("div", { class: "df-sf-row" }, [lab, input]);
    if (help) {
      var h = helpBox(help, id + "-help");
      input.setAttribute("aria-describedby", h.id);
      row.appendChild(h);
    }
    return row;
  };

  // The words an enum value is shown with: its label from the schema ("x-enumLabels"), else the value.
  function enumLabel(schema, value) {
    var labels = (schema && schema["x-enumLabels"]) || {};
    return Object.prototype.hasOwnProperty.call(labels, String(value)) ? labels[String(value)] : String(value);
  }
  // An enum without labels lists codes (file formats, PostgreSQL's sslmode): data, not words to translate.
  function enumIsCode(schema, value) {
    if (schema && schema["x-enumCodes"]) { return true; }
    var labels = (schema && schema["x-enumLabels"]) || {};
    return !Object.prototype.hasOwnProperty.call(labels, String(value));
  }
  // A description marks code (field names, placeholders, examples) with `backticks`: shown as code,
  // left as it is by translators and translation tools.
  function appendMarked(parent, text) {
    String(text).split("`").forEach(function (part, i) {
      if (!part) { return; }
      parent.appendChild(i % 2 ? el("code", { text: part }) : document.createTextNode(part));
    });
  }
  function helpBox(help, id) {
    var h = el("div", { class: "df-sf-help", id: id || null });
    h.appendChild(help);
    return h;
  }

  // The field's description, then its default: a yes/no or an enum label in words, anything else as code.
  Editor.prototype.helpFor = function (schema) {
    var frag = document.createDocumentFragment();
    if (schema.description) { appendMarked(frag, schema.description); }
    var d = schema.default;
    if (d !== undefined && !isObj(d) && !Array.isArray(d)) {
      var parts = String(this.S.default).split("%(value)s");
      if (frag.childNodes.length) { frag.appendChild(document.createTextNode(" ")); }
      frag.appendChild(document.createTextNode(parts[0]));
      if (typeof d === "boolean") {
        frag.appendChild(document.createTextNode(d ? this.S.yes : this.S.no));
      } else if (schema.enum && !enumIsCode(schema, d)) {
        frag.appendChild(document.createTextNode(enumLabel(schema, d)));
      } else {
        frag.appendChild(el("code", { text: typeof d === "string" ? d : JSON.stringify(d) }));
      }
      frag.appendChild(document.createTextNode(parts.slice(1).join("%(value)s")));
    }
    return frag.childNodes.length ? frag : null;
  };

  Editor.prototype.objectFields = function (schema, value, path, set) {
    var self = this;
    var box = el("div", { class: "df-sf-object", "data-path": path });
    var props = schema.properties || {};
    var required = schema.required || [];
    value = isObj(value) ? value : {};
    Object.keys(props).forEach(function (key) {
      var sub = props[key];
      if (sub.const !== undefined) { value[key] = sub.const; return; }
      var node = self.node(key, sub, value[key], join(path, key), required.indexOf(key) >= 0, function (v) {
        if (v === undefined) { delete value[key]; } else { value[key] = v; }
        set(value);
        self.sync();
      });
      box.appendChild(node);
    });
    if (!Object.keys(props).length && schema.additionalProperties && typeof schema.additionalProperties === "object") {
      box.appendChild(this.mapping(schema, value, path, set));
    }
    return box;
  };

  Editor.prototype.node = function (key, schema, value, path, required, set) {
    var self = this;
    var label = schema.title || humanize(key);
    var help = this.helpFor(schema);
    var refs = (this.spec.references || {})[key];
    if (isReference(schema) || (refs && (schema.type === "string" || schema.type === undefined))) {
      var listId = "df-sf-list-" + (++uid);
      var input = el("input", { type: "text", "data-path": path, list: refs ? listId : null, autocomplete: "off" });
      input.value = value === undefined || value === null ? "" : String(value);
      input.addEventListener("input", function () {
        var v = input.value.trim();
        if (v === "") { set(undefined); return; }
        set(isReference(schema) && /^[0-9]+$/.test(v) ? parseInt(v, 10) : v);
      });
      var row = this.field(label, input, help, required);
      if (refs) {
        var list = el("datalist", { id: listId });
        refs.forEach(function (r) { list.appendChild(el("option", { value: r.value, text: r.label })); });
        row.appendChild(list);
      }
      return row;
    }
    if (schema.enum) {
      var select = el("select", { "data-path": path });
      if (!required || value === undefined) { select.appendChild(el("option", { value: "", text: this.S.none })); }
      schema.enum.forEach(function (opt) {
        var o = el("option", { value: JSON.stringify(opt), text: enumLabel(schema, opt), translate: enumIsCode(schema, opt) ? "no" : null });
        if (value !== undefined && JSON.stringify(value) === JSON.stringify(opt)) { o.selected = true; }
        select.appendChild(o);
      });
      select.addEventListener("change", function () { set(select.value === "" ? undefined : JSON.parse(select.value)); });
      return this.field(label, select, help, required);
    }
    if (schema.type === "boolean") {
      var box = el("input", { type: "checkbox", "data-path": path });
      box.checked = value === undefined ? schema.default === true : !!value;
      box.addEventListener("change", function () { set(box.checked); });
      var row2 = this.field(label, box, help, required);
      row2.classList.add("df-sf-check");
      return row2;
    }
    if (schema.type === "integer" || schema.type === "number") {
      var num = el("input", {
        type: "number", "data-path": path, min: schema.minimum, max: schema.maximum,
        step: schema.type === "integer" ? "1" : "any", placeholder: schema.default,
        translate: schema.default !== undefined ? "no" : null,
      });
      num.value = value === undefined || value === null ? "" : String(value);
      num.addEventListener("input", function () {
        if (num.value === "") { set(undefined); return; }
        var n = Number(num.value);
        set(isNaN(n) ? num.value : n);
      });
      return this.field(label, num, help, required);
    }
    if (schema.type === "string") {
      var long = /template|prompt/.test(key);
      // The placeholder shows the default value: data, not words to translate.
      var text = el(long ? "textarea" : "input", {
        type: long ? null : "text", "data-path": path, rows: long ? 3 : null, placeholder: schema.default,
        translate: schema.default !== undefined ? "no" : null,
      });
      text.value = value === undefined || value === null ? "" : String(value);
      text.addEventListener("input", function () { set(text.value === "" ? undefined : text.value); });
      return this.field(label, text, help, required);
    }
    if (schema.type === "array") {
      return this.array(label, schema, value, path, required, set, help);
    }
    if (schema.type === "object" && (schema.properties || typeof schema.additionalProperties === "object")) {
      var fs = el("fieldset", { class: "df-sf-fieldset", "data-path": path }, [el("legend", { text: label })]);
      if (help) { fs.appendChild(helpBox(help)); }
      var current = isObj(value) ? value : (isObj(schema.default) ? clone(schema.default) : {});
      fs.appendChild(schema.properties
        ? this.objectFields(schema, current, path, function (v) { set(v); })
        : this.mapping(schema, current, path, function (v) { set(Object.keys(v).length ? v : undefined); }));
      return fs;
    }
    // Anything else (a free-form object, a value of any type): a small JSON box.
    var any = el("textarea", { "data-path": path, rows: 2, class: "df-sf-json" });
    any.value = value === undefined ? "" : JSON.stringify(value);
    any.addEventListener("change", function () {
      var old = any.parentNode.querySelector(".df-sf-error");
      if (old) { old.remove(); }
      if (any.value.trim() === "") { set(undefined); return; }
      try { set(JSON.parse(any.value)); any.removeAttribute("aria-invalid"); } catch (e) {
        any.setAttribute("aria-invalid", "true");
        any.parentNode.appendChild(el("p", { class: "df-sf-error", text: fmt(self.S.badJson, { error: e.message }) }));
      }
    });
    return this.field(label + " (" + this.S.jsonValue + ")", any, help, required);
  };

  Editor.prototype.mapping = function (schema, value, path, set) {
    var self = this;
    var box = el("div", { class: "df-sf-mapping" });
    var entries = Object.keys(value).map(function (k) { return [k, value[k]]; });
    function commit() {
      var out = {};
      entries.forEach(function (e) { if (e[0] !== "") { out[e[0]] = e[1]; } });
      Object.keys(value).forEach(function (k) { delete value[k]; });
      Object.assign(value, out);
      set(value);
      self.sync();
    }
    function draw() {
      box.textContent = "";
      entries.forEach(function (entry, i) {
        var k = el("input", { type: "text", "aria-label": self.S.key, "data-path": join(path, entry[0] || "") + "#key" });
        k.value = entry[0];
        var v = el("input", { type: "text", "aria-label": self.S.value, "data-path": join(path, entry[0] || "") });
        v.value = entry[1] === undefined ? "" : String(entry[1]);
        k.addEventListener("input", function () { entry[0] = k.value; commit(); });
        v.addEventListener("input", function () { entry[1] = v.value; commit(); });
        var rm = el("button", { type: "button", class: "df-sf-btn", text: self.S.remove });
        rm.addEventListener("click", function () { entries.splice(i, 1); commit(); draw(); });
        box.appendChild(el("div", { class: "df-sf-pair" }, [k, v, rm]));
      });
      var add = el("button", { type: "button", class: "df-sf-btn", text: self.S.add });
      add.addEventListener("click", function () {
        entries.push(["", ""]); draw();
        var keys = box.querySelectorAll(".df-sf-pair input");
        if (keys.length) { keys[keys.length - 2].focus(); }
      });
      box.appendChild(add);
    }
    draw();
    return box;
  };

  Editor.prototype.array = function (label, schema, value, path, required, set, help) {
    var self = this;
    var items = schema.items || {};
    var fs = el("fieldset", { class: "df-sf-fieldset", "data-path": path }, [el("legend", { text: label + (required ? " *" : "") })]);
    if (help) { fs.appendChild(helpBox(help)); }
    var list = Array.isArray(value) ? value : (Array.isArray(schema.default) ? clone(schema.default) : []);
    // A set of choices: one checkbox each.
    if (items.enum) {
      items.enum.forEach(function (opt) {
        var c = el("input", { type: "checkbox", "data-path": join(path, items.enum.indexOf(opt)) });
        c.checked = list.indexOf(opt) >= 0;
        c.addEventListener("change", function () {
          list = items.enum.filter(function (o) {
            return o === opt ? c.checked : list.indexOf(o) >= 0;
          });
          set(list.length ? list : undefined);
        });
        var row = self.field(enumLabel(items, opt), c);
        row.classList.add("df-sf-check");
        if (enumIsCode(items, opt)) { row.querySelector("label").setAttribute("translate", "no"); }
        fs.appendChild(row);
      });
      return fs;
    }
    var union = variants(items);
    var body = el("div", { class: "df-sf-items" });
    fs.appendChild(body);
    function commit() { set(list.length ? list : undefined); self.sync(); }
    function draw(focusIndex) {
      body.textContent = "";
      list.forEach(function (item, i) {
        var itemPath = join(path, i);
        var wrap = el("div", { class: "df-sf-item", "data-path": itemPath });
        var tools = el("div", { class: "df-sf-tools" });
        [["up", -1], ["down", 1]].forEach(function (m) {
          var b = el("button", { type: "button", class: "df-sf-btn", text: self.S[m[0]], disabled: (i + m[1] < 0 || i + m[1] >= list.length) });
          b.addEventListener("click", function () {
            var j = i + m[1];
            var t = list[i]; list[i] = list[j]; list[j] = t;
            commit(); draw(j);
          });
          tools.appendChild(b);
        });
        var rm = el("button", { type: "button", class: "df-sf-btn", text: self.S.remove });
        rm.addEventListener("click", function () { list.splice(i, 1); commit(); draw(Math.min(i, list.length - 1)); });
        tools.appendChild(rm);
        if (union) {
          var kind = isObj(item) ? item[union.tag] : undefined;
          var variant = union.byName[kind];
          var heading = el("div", { class: "df-sf-itemhead", text: fmt(self.S.item, { n: i + 1 }) + " · " + (variant && variant.title ? variant.title : kind) });
          wrap.appendChild(heading);
          wrap.appendChild(tools);
          if (variant) {
            wrap.appendChild(self.objectFields(variant, item, itemPath, function (v) { list[i] = v; commit(); }));
          }
        } else if (items.type === "object" || items.properties) {
          wrap.appendChild(el("div", { class: "df-sf-itemhead", text: fmt(self.S.item, { n: i + 1 }) }));
          wrap.appendChild(tools);
          wrap.appendChild(self.objectFields(items, isObj(item) ? item : {}, itemPath, function (v) { list[i] = v; commit(); }));
        } else {
          var input = self.node(String(i + 1), items, item, itemPath, false, function (v) { list[i] = v === undefined ? "" : v; commit(); });
          input.classList.add("df-sf-inline");
          wrap.appendChild(input);
          wrap.appendChild(tools);
        }
        body.appendChild(wrap);
      });
      if (focusIndex !== undefined && focusIndex >= 0) {
        var target = body.querySelectorAll(".df-sf-item")[focusIndex];
        var f = target && target.querySelector("input, select, textarea");
        if (f) { f.focus(); }
      }
    }
    draw();
    var adder = el("div", { class: "df-sf-adder" });
    if (union) {
      var pick = el("select", { "aria-label": label });
      Object.keys(union.byName).forEach(function (name) {
        pick.appendChild(el("option", { value: name, text: union.byName[name].title || name }));
      });
      var addU = el("button", { type: "button", class: "df-sf-btn", text: fmt(self.S.addItem, { name: label }) });
      addU.addEventListener("click", function () {
        list.push(defaultsOf(union.byName[pick.value]));
        commit(); draw(list.length - 1);
      });
      adder.appendChild(pick);
      adder.appendChild(addU);
    } else {
      var add = el("button", { type: "button", class: "df-sf-btn", text: fmt(self.S.addItem, { name: label }) });
      add.addEventListener("click", function () {
        list.push(items.type === "object" ? defaultsOf(items) : (items.type === "integer" || items.type === "number" ? 0 : ""));
        commit(); draw(list.length - 1);
      });
      adder.appendChild(add);
    }
    fs.appendChild(adder);
    return fs;
  };

  function init(scope) {
    (scope || document).querySelectorAll("[data-df-schemaform]").forEach(function (root) {
      if (root.dfEditor || root.closest(".empty-form")) { return; }
      var raw = root.querySelector("textarea.df-sf-raw");
      if (!raw || raw.id.indexOf("__prefix__") >= 0) { return; }
      root.dfEditor = new Editor(root);
    });
  }
  window.dfSchemaForm = { init: init };
  if (document.readyState !== "loading") { init(); } else { document.addEventListener("DOMContentLoaded", function () { init(); }); }
  // Django's inline formsets announce added rows.
  document.addEventListener("formset:added", function (event) { init(event.target); });
})();
