"""jsonschema's validation errors in the reader's language.

jsonschema words its errors as English sentences ("'x' is not of type 'integer'"), and configs are
validated against JSON Schemas in several places (stage kinds, connectors): they all say what is wrong
through `schema_error_message`, so a Chinese page shows a Chinese reason next to the field.
"""

from __future__ import annotations

import json

from django.utils.translation import gettext_lazy as _

__all__ = ["schema_error_message"]

_TYPE_WORDS = {
    "integer": _("a whole number"),
    "number": _("a number"),
    "string": _("text"),
    "boolean": _("yes or no (true/false)"),
    "object": _("a JSON object"),
    "array": _("a list"),
    "null": _("nothing (null)"),
}


def schema_error_message(error) -> str:
    """A jsonschema validation error in the reader's language (jsonschema's own messages are English
    sentences such as "'x' is not of type 'integer'"); its own message for a rule not named here."""
    rule, value = error.validator, error.validator_value
    if rule == "type":
        types = value if isinstance(value, list) else [value]
        words = " / ".join(str(_TYPE_WORDS.get(t, t)) for t in types)
        return str(_("Enter %(type)s.") % {"type": words})
    texts = {
        "minimum": _("Must be at least %(value)s."),
        "maximum": _("Must be at most %(value)s."),
        "exclusiveMinimum": _("Must be more than %(value)s."),
        "exclusiveMaximum": _("Must be less than %(value)s."),
        "minLength": _("Enter at least %(value)s character(s).") if value != 1 else _("This may not be empty."),
        "maxLength": _("Enter at most %(value)s character(s)."),
        "minItems": _("Give at least %(value)s item(s)."),
        "maxItems": _("Give at most %(value)s item(s)."),
        "uniqueItems": _("Each item may appear only once."),
        "minProperties": _("Give at least %(value)s entry(ies)."),
        "pattern": _("This does not have the required form."),
        "enum": _("Choose one of: %(value)s."),
        "const": _("Must be %(value)s."),
        "oneOf": _("This value fits none of the allowed forms."),
        "anyOf": _("This value fits none of the allowed forms."),
    }
    text = texts.get(rule)
    if text is None:
        return error.message
    if isinstance(value, list):
        value = ", ".join(json.dumps(v, ensure_ascii=False) for v in value)
    elif not isinstance(value, (int, float)) or isinstance(value, bool):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return str(text) % {"value": value}
