"""A JSON-Schema form widget: the browser builds a form from the schema, the raw JSON stays for experts.

Why our own and not django-jsonform: its editor's own words ("Add item", "Remove"...) cannot be
translated, and a config's schema here depends on a sibling field (the stage kind, the connector
kind), which the widget must follow as the operator changes it. The widget is a plain textarea
(the value the form posts, usable without JavaScript) plus `static/portal/schemaform.js`, which
renders fields for the schema of the chosen kind, keeps the textarea in sync, and shows the
server's errors next to the field their JSON path names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from django import forms
from django.core.exceptions import ValidationError
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

__all__ = ["SchemaFormWidget", "attach_error_paths", "split_error_path"]

_PATH_MESSAGE = re.compile(r"^(\$[^\s:]*):\s*(.*)$", re.S)


def split_error_path(message: str) -> tuple[str, str]:
    """'$.rules[0].pattern: bad' -> ('$.rules[0].pattern', 'bad'); a message without a path gets '$'."""
    match = _PATH_MESSAGE.match(str(message))
    return (match.group(1), match.group(2)) if match else ("$", str(message))


def widget_strings() -> dict[str, str]:
    """The editor's own words, translated on the server (the script holds no English of its own)."""
    return {
        "add": str(_("Add")),
        "remove": str(_("Remove")),
        "up": str(_("Move up")),
        "down": str(_("Move down")),
        "key": str(_("Key")),
        "value": str(_("Value")),
        "none": str(_("(not set)")),
        "badJson": str(_("This is not valid JSON: %(error)s")),
        "jsonValue": str(_("JSON value")),
        "noSchema": str(_("Choose a kind first.")),
        "noSettings": str(_("This kind has no settings.")),
        "required": str(_("required")),
        "default": str(_("default: %(value)s")),
        "item": str(_("Item %(n)s")),
        "addItem": str(_("Add %(name)s")),
        "yes": str(_("yes")),
        "no": str(_("no")),
    }


class SchemaFormWidget(forms.Textarea):
    """Edits a JSON object through a form generated from a JSON Schema chosen by a sibling `kind` field.

    Args:
        schemas: a callable returning {kind: JSON Schema}; called at render time (registries may grow).
        kind_field: the name of the sibling field whose value picks the schema (e.g. "kind").
        references: a callable returning {property name: [{"value", "label"}]}: suggestions for reference
            fields (datasets, QC policies, data sources) offered as an autocomplete list.
        extras: a callable returning {kind: {...}} passed to the script (e.g. allowed file roots).
    """

    template_name = "portal/widgets/schema_form.html"

    def __init__(
        self,
        *,
        schemas: Callable[[], dict],
        kind_field: str = "kind",
        references: Callable[[], dict] | None = None,
        extras: Callable[[], dict] | None = None,
        attrs=None,
    ):
        super().__init__(attrs={"rows": 8, "cols": 60, "class": "df-sf-raw", "spellcheck": "false", **(attrs or {})})
        self.schemas = schemas
        self.kind_field = kind_field
        self.references = references or dict
        self.extras = extras or dict
        self.errors: list[dict] = []

    class Media:
        js = ("portal/schemaform.js",)

    def render(self, name, value, attrs=None, renderer=None):
        # The project's template engine (not the form renderer's): the template lives in templates/.
        return mark_safe(render_to_string(self.template_name, self.get_context(name, value, attrs)))  # noqa: S308

    def format_value(self, value):
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["schemaform"] = {
            "kind_field": self.kind_field,
            "spec_id": f"{context['widget']['attrs'].get('id', name)}-schema",
            "spec": {
                "schemas": self.schemas(),
                "references": self.references(),
                "extras": self.extras(),
                "strings": widget_strings(),
                "errors": self.errors,
            },
        }
        return context


def attach_error_paths(form: forms.BaseForm, field: str) -> None:
    """Hand the field's errors to its SchemaFormWidget as (JSON path, message) pairs for inline display."""
    widget = form.fields[field].widget
    if not isinstance(widget, SchemaFormWidget):
        return
    errors = form.errors.get(field) if form.is_bound else None
    pairs = []
    for message in errors or []:
        path, text = split_error_path(message)
        pairs.append({"path": path, "message": text})
    widget.errors = pairs


def validation_error_for(path: str, message: str, field: str = "config") -> ValidationError:
    """A form error for a config field that keeps the JSON path the widget uses to place it."""
    return ValidationError({field: f"{path}: {message}"})
