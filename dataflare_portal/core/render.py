"""The one renderer for template strings a user supplies (publish locations, prompt templates, ...).

A user's string is data, never a Python format string: `str.format` would resolve `{run_id.__init__...}`
through attributes and indexes all the way to `django.conf.settings`. This module parses the `{name}`
syntax itself and knows nothing but named placeholders:

- a placeholder is `{name}` or `{name:spec}`; `{{` and `}}` are literal braces;
- `name` must be in the allow-list the caller gives (or, for an open namespace such as a record's
  fields, any plain name); attribute access (`{a.b}`), indexing (`{a[0]}`), positional fields
  (`{}`, `{0}`), conversions (`{a!r}`) and nested fields (`{a:{b}}`) are always refused;
- a format spec is allowed only where the caller allows one of two small shapes: `TRUNCATE`
  (`.N`, cut a text to N characters) or `ZERO_PAD` (`0Nd`, an integer padded to N <= 20 digits);
- lone UTF-16 surrogates are refused (they cannot be encoded, so they can reach no file or row).

Values are looked up as mapping keys only and turned into text by the caller's `to_text`; nothing is
ever called or indexed on them. Errors are `TemplateSyntaxError` with a stable `code` and the offending
`placeholder`; callers attach the JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext

__all__ = [
    "NO_SPEC",
    "TRUNCATE",
    "ZERO_PAD",
    "SafeTemplate",
    "TemplateSyntaxError",
    "compile_template",
    "find_surrogate",
    "render_template",
]

NO_SPEC = "none"
TRUNCATE = "truncate"
ZERO_PAD = "zero_pad"
_SPEC_SHAPES = {
    TRUNCATE: re.compile(r"\.(\d{1,7})"),
    ZERO_PAD: re.compile(r"0(\d{1,2})d"),
}
MAX_PAD_WIDTH = 20
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that would make str.format walk into the value (or nest); refused in a name everywhere.
_NAME_FORBIDDEN = re.compile(r"[.\[\]!:{}]")


class TemplateSyntaxError(ValueError):
    """A template string that is refused: `code` is stable, `placeholder` the offending field text."""

    def __init__(self, message: str, *, code: str, placeholder: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code
        self.placeholder = placeholder


@dataclass(frozen=True)
class _Field:
    name: str
    spec_kind: str
    spec_arg: int


@dataclass(frozen=True)
class SafeTemplate:
    """A parsed template: literal text and named fields, rendered without str.format."""

    text: str
    parts: tuple[str | _Field, ...]

    @property
    def names(self) -> list[str]:
        """The placeholder names in order of first use."""
        return list(dict.fromkeys(p.name for p in self.parts if isinstance(p, _Field)))

    def render(self, values: Mapping[str, Any], *, to_text: Callable[[Any], str] = str) -> str:
        """Fill the fields from `values` (mapping lookups only); a missing key raises KeyError(name)."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = values[part.name]
            if part.spec_kind == ZERO_PAD:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TemplateSyntaxError(
                        gettext("Placeholder {%(name)s} pads integers only.") % {"name": part.name},
                        code="spec_not_allowed",
                        placeholder=part.name,
                    )
                out.append(format(value, f"0{part.spec_arg}d"))  # an int and a width <= 20: nothing else
                continue
            text = to_text(value)
            out.append(text[: part.spec_arg] if part.spec_kind == TRUNCATE else text)
        return "".join(out)


def find_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate in `text`, or None."""
    match = _SURROGATE.search(text)
    return match.start() if match else None


def _spec_message(name: str, spec: str, allowed: str) -> str:
    if allowed == TRUNCATE:
        hint = gettext("only a truncation like {%(name)s:.200} is allowed") % {"name": name}
    elif allowed == ZERO_PAD:
        hint = gettext("only zero-padding like {%(name)s:04d} is allowed") % {"name": name}
    else:
        hint = gettext("no format spec is allowed here")
    return gettext("Format spec ':%(spec)s' in {%(name)s}: %(hint)s.") % {"spec": spec[:50], "name": name, "hint": hint}


def _field(body: str, placeholders: Mapping[str, str] | None, open_spec: str) -> _Field:
    name, colon, spec = body.partition(":")
    conv_at = name.find("!")
    if conv_at >= 0:
        raise TemplateSyntaxError(
            gettext("Placeholder {%(field)s}: conversions such as !r are not allowed.") % {"field": body[:50]},
            code="conversion_not_allowed",
            placeholder=body[:100],
        )
    if not name or name.isdigit():
        raise TemplateSyntaxError(
            gettext("Placeholders need a name, e.g. {%(example)s}; '{}' and '{0}' are not allowed.")
            % {"example": next(iter(placeholders), "text") if placeholders else "text"},
            code="positional_placeholder",
            placeholder=body[:100],
        )
    if _NAME_FORBIDDEN.search(name):
        raise TemplateSyntaxError(
            gettext("Placeholder {%(field)s}: attribute access and indexing ('.', '[') are not allowed.")
            % {"field": body[:50]},
            code="attribute_access",
            placeholder=body[:100],
        )
    if placeholders is not None and name not in placeholders:
        raise TemplateSyntaxError(
            gettext("Unknown placeholder {%(name)s}; allowed: %(allowed)s.")
            % {"name": name[:50], "allowed": ", ".join(f"{{{n}}}" for n in placeholders)},
            code="unknown_placeholder",
            placeholder=name[:100],
        )
    allowed = placeholders[name] if placeholders is not None else open_spec
    if not colon:
        return _Field(name, NO_SPEC, 0)
    shape = _SPEC_SHAPES.get(allowed)
    match = shape.fullmatch(spec) if shape is not None else None
    if match is None or (allowed == ZERO_PAD and not 1 <= int(match.group(1)) <= MAX_PAD_WIDTH):
        raise TemplateSyntaxError(_spec_message(name, spec, allowed), code="spec_not_allowed", placeholder=body[:100])
    return _Field(name, allowed, int(match.group(1)))


def compile_template(text: str, *, placeholders: Mapping[str, str] | None, open_spec: str = NO_SPEC) -> SafeTemplate:
    """Parse `text`; `placeholders` maps each allowed name to its spec kind (None: any plain name, `open_spec`)."""
    if not isinstance(text, str):
        raise TemplateSyntaxError(gettext("A template must be a string."), code="not_a_string")
    if find_surrogate(text) is not None:
        raise TemplateSyntaxError(
            gettext("The template contains a lone UTF-16 surrogate (e.g. \\ud800), which is not text."),
            code="surrogate",
        )
    parts: list[str | _Field] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "}":
            raise TemplateSyntaxError(
                gettext("A single '}' at character %(pos)d; write '}}' for a literal brace.") % {"pos": i + 1},
                code="malformed",
            )
        elif ch == "{":
            end = text.find("}", i + 1)
            nested = text.find("{", i + 1)
            if end < 0:
                raise TemplateSyntaxError(
                    gettext("A '{' at character %(pos)d is never closed; write '{{' for a literal brace.")
                    % {"pos": i + 1},
                    code="malformed",
                )
            if 0 <= nested < end:
                raise TemplateSyntaxError(
                    gettext("Nested placeholders are not allowed (character %(pos)d).") % {"pos": nested + 1},
                    code="nested_placeholder",
                    placeholder=text[i : end + 1][:100],
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_field(text[i + 1 : end], placeholders, open_spec))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))
    return SafeTemplate(text=text, parts=tuple(parts))


def render_template(
    text: str,
    values: Mapping[str, Any],
    *,
    placeholders: Mapping[str, str] | None,
    open_spec: str = NO_SPEC,
    to_text: Callable[[Any], str] = str,
) -> str:
    """compile_template(...).render(values): the one-shot form for a single use."""
    return compile_template(text, placeholders=placeholders, open_spec=open_spec).render(values, to_text=to_text)
