"""Run parameters: a pipeline declares them with a JSON Schema; a run supplies values; stage configs use them.

- `Pipeline.parameters_schema` is a JSON Schema of an object (`{"type": "object", "properties": {...}}`),
  checked as a schema when the pipeline is saved (`parameters_schema_problems`).
- A run's values are validated against it before the run starts (`parameters_validate`); defaults are
  filled in; the error names the parameter (`parameters.<name>`). A pipeline without a schema keeps
  whatever object it is given (as before parameters had a schema), but no stage can refer to them.
- A stage config refers to a parameter by a whole value `{"$param": "name"}` (any JSON type, as given) or
  inside text with `{"$template": "out/{lang}/part.jsonl"}`, rendered by the one safe renderer
  (dataflare_portal/core/render.py, never str.format): only the declared parameter names can be filled in,
  `{{`/`}}` are literal braces (so `{{version:04d}}` stays a publish-location placeholder for later).
- `pattern` in a parameter schema runs in RE2 (linear time), like every other user regex.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from django.utils.translation import gettext as _

from dataflare_portal.core.jsonschema_messages import schema_error_message
from dataflare_portal.core.render import NO_SPEC, TemplateSyntaxError, compile_template
from dataflare_portal.core.userregex import UserRegexError, compile_user_regex

__all__ = [
    "ParameterError",
    "config_references",
    "config_resolve",
    "parameters_schema_problems",
    "parameters_validate",
]

PARAM = "$param"
TEMPLATE = "$template"
MAX_SCHEMA_BYTES = 64 * 1024


class ParameterError(ValueError):
    """Bad run parameters or a bad reference: `errors` maps a path (`parameters.limit`) to messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def _re2_pattern(validator, pattern, instance, schema):
    if not validator.is_type(instance, "string"):
        return
    try:
        matched = compile_user_regex(pattern).search(instance) is not None
    except UserRegexError as exc:
        yield jsonschema.ValidationError(str(exc))
        return
    if not matched:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 with `pattern` in RE2: a parameter schema is user input, Python's re could backtrack forever.
ParametersValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _re2_pattern})


def _patterns(schema: Any, path: str = "parameters_schema"):
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield path, value
            elif key == "patternProperties":
                yield path, None
            else:
                yield from _patterns(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _patterns(value, f"{path}[{i}]")


def parameters_schema_problems(schema: Any) -> dict[str, str]:
    """What is wrong with a parameters schema, as {json path: message}; empty when it is usable."""
    if schema in (None, {}):
        return {}
    if not isinstance(schema, dict):
        return {"parameters_schema": _("The parameters schema must be a JSON object.")}
    if len(json.dumps(schema, default=str)) > MAX_SCHEMA_BYTES:
        return {"parameters_schema": _("The parameters schema is larger than 64 KiB.")}
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        return {f"parameters_schema.{where}" if where else "parameters_schema": exc.message[:300]}
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        return {"parameters_schema": _('Declare the parameters as {"type": "object", "properties": {...}}.')}
    for name in schema["properties"]:
        if not _is_name(name):
            return {
                f"parameters_schema.properties.{name[:50]}": _(
                    "A parameter name is letters, digits and underscores, starting with a letter."
                )
            }
    for path, pattern in _patterns(schema):
        if pattern is None:
            return {path: _("patternProperties is not supported; declare each parameter by name.")}
        try:
            compile_user_regex(pattern)
        except UserRegexError as exc:
            return {f"{path}.pattern": str(exc)}
    for name, spec in schema["properties"].items():
        if isinstance(spec, dict) and "default" in spec:
            error = jsonschema.exceptions.best_match(ParametersValidator(spec).iter_errors(spec["default"]))
            if error is not None:
                return {f"parameters_schema.properties.{name}.default": schema_error_message(error)}
    return {}


def _is_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and name[0].isascii()
        and name[0].isalpha()
        and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    )


def parameters_validate(schema: dict | None, values: Any) -> dict:
    """The run's parameters with the schema's defaults filled in; raises ParameterError naming the parameter."""
    schema = schema or {}
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParameterError({"parameters": [_("Parameters must be a JSON object of name: value.")]})
    properties = schema.get("properties") or {}
    if not schema:
        # No schema declared: the values are kept as given (recorded on the run); no stage can refer to them.
        return dict(values)
    out = {name: spec["default"] for name, spec in properties.items() if isinstance(spec, dict) and "default" in spec}
    out.update(values)
    errors: dict[str, list[str]] = {}
    for error in ParametersValidator(schema).iter_errors(out):
        parts = [str(p) for p in error.absolute_path]
        message = schema_error_message(error)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [n for n in error.validator_value if n not in error.instance]
            parts = missing[:1] or parts
            message = _("This parameter is required.")
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            extra = sorted(k for k in error.instance if k not in properties)
            parts = extra[:1] or parts
            message = _("Unknown parameter.")
        key = ".".join(["parameters", *parts])[:200]
        errors.setdefault(key, []).append(message)
    if errors:
        raise ParameterError(errors)
    return out


# ---- references in stage configs ---------------------------------------------------------------
def _walk(config: Any, path: str):
    if isinstance(config, dict):
        if set(config) == {PARAM} or set(config) == {TEMPLATE}:
            yield path, config
            return
        for key, value in config.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from _walk(value, f"{path}[{i}]")


def _template_names(text: Any, names, path: str) -> list[str]:
    try:
        return compile_template(text, placeholders=dict.fromkeys(names, NO_SPEC)).names
    except TemplateSyntaxError as exc:
        raise ParameterError({path: [exc.message]}) from None


def config_references(config: Any, names, *, path: str = "config") -> set[str]:
    """The parameter names a stage config uses; raises ParameterError for an undeclared one (with its path)."""
    names = list(names)
    used: set[str] = set()
    for where, ref in _walk(config, path):
        if PARAM in ref:
            name = ref[PARAM]
            if not isinstance(name, str) or name not in names:
                raise ParameterError(
                    {where: [_("Unknown parameter %(name)s; declared: %(names)s.") % _known(name, names)]}
                )
            used.add(name)
        else:
            used.update(_template_names(ref[TEMPLATE], names, where))
    return used


def _known(name, names) -> dict:
    return {"name": json.dumps(name, ensure_ascii=False)[:60], "names": ", ".join(names) or "-"}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def config_resolve(config: Any, values: dict, *, path: str = "config", partial: bool = False) -> Any:
    """The config with every reference replaced by its value. With `partial`, a reference whose value is
    missing stays as it is (used to check a config with the defaults only)."""
    if isinstance(config, dict):
        if set(config) == {PARAM}:
            name = config[PARAM]
            if isinstance(name, str) and name in values:
                return values[name]
            if partial:
                return config
            raise ParameterError({path: [_("Unknown parameter %(name)s; declared: %(names)s.") % _known(name, values)]})
        if set(config) == {TEMPLATE}:
            if partial:
                try:
                    names = compile_template(config[TEMPLATE], placeholders=None).names
                except TemplateSyntaxError as exc:
                    raise ParameterError({path: [exc.message]}) from None
                if any(n not in values for n in names):
                    return config
            _template_names(config[TEMPLATE], values.keys(), path)
            template = compile_template(config[TEMPLATE], placeholders=dict.fromkeys(values, NO_SPEC))
            return template.render(values, to_text=_text)
        return {k: config_resolve(v, values, path=f"{path}.{k}", partial=partial) for k, v in config.items()}
    if isinstance(config, list):
        return [config_resolve(v, values, path=f"{path}[{i}]", partial=partial) for i, v in enumerate(config)]
    return config


def has_references(config: Any) -> bool:
    """Whether a stage config refers to any parameter."""
    return next(_walk(config, "config"), None) is not None
