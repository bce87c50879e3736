"""Pipeline templates as JSON: safe parsing, canonical form and checksum, export, import, versions, diff.

The template format is documented in docs/templates.md and shipped as a JSON Schema
(`TEMPLATE_JSON_SCHEMA`, also served at /api/v1/pipelines/templates/schema/). Hostile input is
bounded *before* it reaches `json.loads`: size, nesting depth (an iterative scan, so no recursion),
key counts, NUL characters, duplicate keys, non-finite numbers and oversized integers are each
refused with a `TemplateInputError` naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy

from catalog.models import Dataset, Project
from dataflare_portal.core.api.parsers import json_depth_exceeds
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.render import find_surrogate
from dataflare_portal.core.services import audit_record, audit_snapshot

from .models import ModelConfig, Pipeline, PipelineStage, PipelineTemplate, QCPolicy, default_batch_size

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MAX_DEPTH = 32
MAX_KEYS_PER_OBJECT = 1000
MAX_ITEMS_PER_ARRAY = 10_000
MAX_NODES = 200_000
MAX_STAGES = 200
STAGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$"
QC_POLICY_FIELDS = (
    "description",
    "rules",
    "score_field",
    "min_score",
    "aql",
    "inspection_level",
    "sample_size",
    "acceptance_number",
    "seed",
    "require_review",
)

_dataset_ref = {
    "type": "object",
    "required": ["project", "name"],
    "additionalProperties": False,
    "properties": {
        "project": {"type": "string", "minLength": 1, "maxLength": 100},
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
    },
}

TEMPLATE_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://dataflare.example/schemas/pipeline-template-v1.json",
    "title": "DataFlare pipeline template",
    "type": "object",
    "required": ["schema_version", "name", "stages"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "const": 1},
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": "string", "maxLength": 10_000},
        "project": {"type": "string", "minLength": 1, "maxLength": 100},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "max_batch_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "parameters_schema": {"type": "object"},
        "input_dataset": {"oneOf": [{"type": "null"}, _dataset_ref]},
        "output_dataset": {"oneOf": [{"type": "null"}, _dataset_ref]},
        "qc_policy": {
            "oneOf": [
                {"type": "null"},
                {"type": "string", "minLength": 1, "maxLength": 100},
                {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "description": {"type": "string"},
                        "rules": {"type": "array"},
                        "score_field": {"type": "string", "maxLength": 100},
                        "min_score": {"type": ["number", "null"]},
                        "aql": {"type": "number"},
                        "inspection_level": {"type": "string", "maxLength": 4},
                        "sample_size": {"type": ["integer", "null"], "minimum": 1},
                        "acceptance_number": {"type": ["integer", "null"], "minimum": 0},
                        "seed": {"type": "integer"},
                        "require_review": {"type": "boolean"},
                    },
                },
            ]
        },
        "stages": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_STAGES,
            "items": {
                "type": "object",
                "required": ["id", "kind"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": STAGE_ID_PATTERN},
                    "kind": {"type": "string", "minLength": 1, "maxLength": 50},
                    "name": {"type": "string", "maxLength": 100},
                    "config": {"type": "object"},
                    "model_config": {"type": ["string", "null"], "maxLength": 100},
                },
            },
        },
    },
}


class TemplateInputError(ValueError):
    """A template body that is refused before validation: status 400 or 413, a code and a message."""

    def __init__(self, message: str, *, code: str = "invalid", status: int = 400, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.path = path

    def fields(self) -> dict | None:
        return {self.path: [self.message]} if self.path else None


# ---- Safe parsing ------------------------------------------------------------------------
def _scan_depth(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than max_depth, before json.loads can recurse into it."""
    if json_depth_exceeds(text, max_depth):
        raise TemplateInputError(
            _("The JSON is nested deeper than %(max)d levels.") % {"max": max_depth}, code="too_deep"
        )


def _pairs_hook(pairs):
    keys = [k for k, _v in pairs]
    if len(keys) > MAX_KEYS_PER_OBJECT:
        raise TemplateInputError(
            _("An object has %(n)d keys; at most %(max)d are allowed.") % {"n": len(keys), "max": MAX_KEYS_PER_OBJECT},
            code="too_many_keys",
        )
    if len(set(keys)) != len(keys):
        seen, dup = set(), ""
        for k in keys:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise TemplateInputError(_("Duplicate key %(key)r in a JSON object.") % {"key": dup[:50]}, code="duplicate_key")
    return dict(pairs)


def _refuse_constant(name):
    raise TemplateInputError(_("%(value)s is not valid JSON.") % {"value": name}, code="invalid_json")


def _surrogate_message() -> str:
    return _("A string contains a lone UTF-16 surrogate (such as \\ud800), which is not text.")


def _walk_bounds(value: Any) -> None:
    """Iteratively check node counts, array sizes and NUL characters in keys and strings."""
    stack = [(value, "$")]
    nodes = 0
    while stack:
        item, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise TemplateInputError(
                _("The JSON has more than %(max)d values.") % {"max": MAX_NODES}, code="too_many_values"
            )
        if isinstance(item, dict):
            for key, sub in item.items():
                if "\x00" in key:
                    raise TemplateInputError(_("A key contains a NUL character."), code="nul_character", path=path)
                if find_surrogate(key) is not None:
                    raise TemplateInputError(_surrogate_message(), code="surrogate", path=path)
                stack.append((sub, f"{path}.{key}"))
        elif isinstance(item, list):
            if len(item) > MAX_ITEMS_PER_ARRAY:
                raise TemplateInputError(
                    _("An array has more than %(max)d items.") % {"max": MAX_ITEMS_PER_ARRAY},
                    code="too_many_items",
                    path=path,
                )
            stack.extend((sub, f"{path}[{i}]") for i, sub in enumerate(item))
        elif isinstance(item, str):
            if "\x00" in item:
                raise TemplateInputError(_("A string contains a NUL character."), code="nul_character", path=path)
            if find_surrogate(item) is not None:
                # json.loads accepts "\ud800"; the string cannot be encoded, so it would fail later as a 500.
                raise TemplateInputError(_surrogate_message(), code="surrogate", path=path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise TemplateInputError(_("Numbers must be finite."), code="invalid_json", path=path)


def template_parse(raw: bytes | str) -> dict:
    """Parse an untrusted template body into a dict, refusing anything unbounded or malformed."""
    limit = settings.MAX_UPLOAD_BYTES
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > limit:
        raise TemplateInputError(
            _("The body is %(size)d bytes; the limit is %(limit)d bytes.") % {"size": size, "limit": limit},
            code="too_large",
            status=413,
        )
    if isinstance(raw, bytes):
        if b"\x00" in raw:
            raise TemplateInputError(_("The body contains a NUL byte."), code="nul_character")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TemplateInputError(
                _("The body is not UTF-8 (byte %(pos)d).") % {"pos": exc.start}, code="invalid_encoding"
            )
    else:
        text = raw
        if "\x00" in text:
            raise TemplateInputError(_("The body contains a NUL character."), code="nul_character")
    if not text.strip():
        raise TemplateInputError(_("The body is empty; a template JSON object is expected."), code="empty")
    _scan_depth(text, MAX_DEPTH)
    try:
        value = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_refuse_constant)
    except TemplateInputError:
        raise
    except json.JSONDecodeError as exc:
        raise TemplateInputError(
            _("Invalid JSON at line %(line)d column %(col)d: %(msg)s")
            % {"line": exc.lineno, "col": exc.colno, "msg": exc.msg},
            code="invalid_json",
        )
    except RecursionError:
        # Unreachable after the depth scan, kept as a second fence: never let it become a 500.
        raise TemplateInputError(_("The JSON is nested too deeply."), code="too_deep")
    except ValueError as exc:
        # e.g. an integer literal longer than Python's digit limit.
        raise TemplateInputError(_("Invalid JSON value: %(msg)s") % {"msg": str(exc)[:200]}, code="invalid_json")
    _walk_bounds(value)
    if not isinstance(value, dict):
        raise TemplateInputError(
            _("The template must be a JSON object, not %(type)s.") % {"type": type(value).__name__},
            code="wrong_type",
            path="$",
        )
    return template_check_shape(value)


def _json_path(parts) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def template_check_shape(body: dict) -> dict:
    """Check schema_version first (a future one gets its own message), then the JSON Schema."""
    import jsonschema

    version = body.get("schema_version")
    if version is None:
        raise TemplateInputError(_("schema_version is required."), code="schema_version", path="$.schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TemplateInputError(_("schema_version must be an integer."), code="wrong_type", path="$.schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise TemplateInputError(
            _("schema_version %(v)d is not supported by this portal (supported: %(ok)s); upgrade the portal.")
            % {"v": version, "ok": ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))},
            code="unsupported_schema_version",
            path="$.schema_version",
        )
    validator = jsonschema.Draft202012Validator(TEMPLATE_JSON_SCHEMA)
    errors = sorted(validator.iter_errors(body), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        path = _json_path(err.absolute_path)
        raise TemplateInputError(
            _("%(path)s: %(msg)s") % {"path": path, "msg": _schema_message(err)}, code="wrong_type", path=path
        )
    return body


def _schema_message(err) -> str:
    # jsonschema's messages echo the whole offending value, which can be megabytes; keep them short.
    if err.validator == "type":
        return _("expected %(type)s") % {"type": err.validator_value}
    if err.validator == "additionalProperties":
        return _("unknown field(s) %(names)s") % {
            "names": ", ".join(sorted(set(err.instance) - set(err.schema.get("properties", {}))))[:200]
        }
    if err.validator == "required":
        return err.message[:200]
    if err.validator == "oneOf":
        return _("has the wrong type or shape")
    return err.message[:200]


# ---- Canonical form, checksum -------------------------------------------------------------
def canonical_json(body: dict) -> str:
    """The canonical text of a template: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def template_checksum(body: dict) -> str:
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


# ---- Export ------------------------------------------------------------------------------
def _dataset_ref_of(dataset: Dataset | None) -> dict | None:
    return {"project": dataset.project.slug, "name": dataset.name} if dataset else None


def qc_policy_body(policy: QCPolicy) -> dict:
    """A QC policy inlined in a template, so a fresh portal can recreate it."""
    body = {"name": policy.name}
    for name in QC_POLICY_FIELDS:
        body[name] = getattr(policy, name)
    return body


def template_export_body(pipeline: Pipeline) -> dict:
    """The template JSON of a pipeline (deterministic: same pipeline, same bytes)."""
    stages = []
    for stage in pipeline.stages.select_related("model_config").order_by("position", "id"):
        stages.append(
            {
                "id": stage.key,
                "kind": stage.kind,
                "name": stage.name,
                "config": stage.config or {},
                "model_config": stage.model_config.name if stage.model_config_id else None,
            }
        )
    body = {
        "schema_version": SCHEMA_VERSION,
        "name": pipeline.name,
        "description": pipeline.description,
        "project": pipeline.project.slug,
        "batch_size": pipeline.batch_size,
        "max_batch_attempts": pipeline.max_batch_attempts,
        "input_dataset": _dataset_ref_of(pipeline.input_dataset),
        "output_dataset": _dataset_ref_of(pipeline.output_dataset),
        "qc_policy": qc_policy_body(pipeline.qc_policy) if pipeline.qc_policy_id else None,
        "stages": stages,
    }
    # Only when declared: a pipeline without run parameters keeps the body (and checksum) it had
    # before templates carried them.
    if pipeline.parameters_schema:
        body["parameters_schema"] = pipeline.parameters_schema
    return body


# ---- Versions ----------------------------------------------------------------------------
def template_version_save(*, body: dict, actor, project: Project | None = None) -> tuple[PipelineTemplate, bool]:
    """Store a body as a new immutable version of its template unless the latest version is identical."""
    checksum = template_checksum(body)
    name = body["name"]
    for _attempt in range(5):
        try:
            # A savepoint per attempt: two first versions of one name race on the unique (name, version)
            # constraint (there is no row to lock yet); the loser re-reads and takes the next number.
            with transaction.atomic():
                latest = PipelineTemplate.objects.select_for_update().filter(name=name).order_by("-version").first()
                if latest is not None and latest.checksum == checksum:
                    return latest, False
                number = (latest.version if latest is not None else 0) + 1
                template = PipelineTemplate(
                    name=name,
                    version=number,
                    schema_version=body.get("schema_version", SCHEMA_VERSION),
                    description=body.get("description", ""),
                    body=body,
                    checksum=checksum,
                    project=project,
                    created_by=actor if getattr(actor, "is_authenticated", False) else None,
                )
                template.full_clean(validate_unique=False, validate_constraints=False)
                template.save()
                audit_record(
                    actor=actor,
                    action=AuditAction.CREATE,
                    instance=template,
                    after={"name": name, "version": number, "checksum": checksum},
                    message=_("New template version."),
                )
            return template, True
        except IntegrityError:
            continue
    raise IntegrityError(f"could not allocate a version number for template {name!r}")


def pipeline_template_sync(*, pipeline: Pipeline, actor) -> PipelineTemplate:
    """Make the pipeline's current shape a template version (new only if it changed) and point at it."""
    body = template_export_body(pipeline)
    template, _created = template_version_save(body=body, actor=actor, project=pipeline.project)
    if pipeline.template_id != template.pk:
        Pipeline.objects.filter(pk=pipeline.pk).update(template=template)
        pipeline.template = template
    return template


# ---- Import ------------------------------------------------------------------------------
# How an import plan line reads (action, then the kind of object), in the reader's language.
PLAN_ACTION_LABELS = {
    "create": pgettext_lazy("import plan", "create"),
    "update": pgettext_lazy("import plan", "update"),
    "delete": pgettext_lazy("import plan", "delete"),
    "reuse": pgettext_lazy("import plan", "reuse"),
}
PLAN_OBJECT_LABELS = {
    "project": gettext_lazy("project"),
    "pipeline": gettext_lazy("pipeline"),
    "stage": gettext_lazy("stage"),
    "template_version": gettext_lazy("template version"),
    "qc_policy": gettext_lazy("QC policy"),
}


@dataclass
class ImportPlan:
    """What an import did or would do: one line per object, plus the validation report."""

    dry_run: bool
    actions: list[dict] = field(default_factory=list)
    report: Any = None
    pipeline: Pipeline | None = None
    template: PipelineTemplate | None = None

    def add(self, action: str, object_type: str, name: str, **extra) -> None:
        self.actions.append({"action": action, "object": object_type, "name": name, **extra})

    def display_actions(self) -> list[dict]:
        """The actions with readable labels ("create QC policy", not "create qc_policy")."""
        return [
            {
                **a,
                "action_label": str(PLAN_ACTION_LABELS.get(a["action"], a["action"])),
                "object_label": str(PLAN_OBJECT_LABELS.get(a["object"], a["object"])),
            }
            for a in self.actions
        ]

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "actions": self.actions,
            "validation": self.report.to_dict() if self.report is not None else None,
            "pipeline": self.pipeline.pk if self.pipeline is not None and self.pipeline.pk else None,
            "template": (
                {"id": self.template.pk, "name": self.template.name, "version": self.template.version}
                if self.template is not None and self.template.pk
                else None
            ),
        }


class _DryRunRollback(Exception):
    pass


def _resolve_dataset(ref: dict | None) -> Dataset | None:
    if not ref:
        return None
    return Dataset.objects.select_related("project").filter(project__slug=ref["project"], name=ref["name"]).first()


def template_import(
    *, body: dict, actor, dry_run: bool = False, project: Project | None = None, probe: bool = False
) -> ImportPlan:
    """Create or update the pipeline a validated template describes, atomically; dry_run rolls it all back.

    Raises TemplateValidationFailed (with the report) when the template does not validate.
    """
    from .validation import TemplateValidationFailed, template_validate

    plan = ImportPlan(dry_run=dry_run)
    report = template_validate(body, probe=probe, project=project)
    plan.report = report
    if not report.ok:
        raise TemplateValidationFailed(report)
    try:
        with transaction.atomic():
            _apply_template(plan, body=body, actor=actor, project=project)
            if dry_run:
                raise _DryRunRollback
    except _DryRunRollback:
        pass
    return plan


def _apply_template(plan: ImportPlan, *, body: dict, actor, project: Project | None) -> None:
    if project is None:
        slug = body.get("project") or "default"
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            project = Project(name=slug, slug=slug)
            project.full_clean()
            project.save()
            audit_record(actor=actor, action=AuditAction.IMPORT, instance=project, after=audit_snapshot(project))
            plan.add("create", "project", slug)
    policy = _import_policy(plan, body.get("qc_policy"), actor=actor)
    pipeline = Pipeline.objects.select_for_update().filter(project=project, name=body["name"]).first()
    before = None
    if pipeline is None:
        pipeline = Pipeline(project=project, name=body["name"])
        plan.add("create", "pipeline", body["name"])
    else:
        before = audit_snapshot(pipeline)
        before["stages"] = template_export_body(pipeline)["stages"]
        plan.add("update", "pipeline", body["name"])
    pipeline.description = body.get("description", "")
    pipeline.batch_size = body.get("batch_size") or default_batch_size()
    pipeline.max_batch_attempts = body.get("max_batch_attempts", 3)
    pipeline.parameters_schema = body.get("parameters_schema") or {}
    pipeline.input_dataset = _resolve_dataset(body.get("input_dataset"))
    pipeline.output_dataset = _resolve_dataset(body.get("output_dataset"))
    pipeline.qc_policy = policy
    pipeline.full_clean()
    pipeline.save()
    old_keys = set(pipeline.stages.values_list("key", flat=True))
    pipeline.stages.all().delete()
    configs = {
        mc.name: mc for mc in ModelConfig.objects.filter(name__in=[s.get("model_config") for s in body["stages"]])
    }
    for position, spec in enumerate(body["stages"]):
        stage = PipelineStage(
            pipeline=pipeline,
            key=spec["id"],
            kind=spec["kind"],
            name=spec.get("name", ""),
            position=position,
            config=spec.get("config") or {},
            model_config=configs.get(spec.get("model_config")) if spec.get("model_config") else None,
        )
        stage.full_clean()
        stage.save()
        plan.add("update" if spec["id"] in old_keys else "create", "stage", spec["id"], kind=spec["kind"])
    for key in sorted(old_keys - {s["id"] for s in body["stages"]}):
        plan.add("delete", "stage", key)
    # The stored version is the normalised export of what was created, so export -> import -> export
    # is a fixed point even when the uploaded body left optional fields out.
    normalised = template_export_body(pipeline)
    template, created = template_version_save(body=normalised, actor=actor, project=project)
    plan.add("create" if created else "reuse", "template_version", f"{template.name} v{template.version}")
    Pipeline.objects.filter(pk=pipeline.pk).update(template=template)
    pipeline.template = template
    after = audit_snapshot(pipeline)
    after["stages"] = normalised["stages"]
    audit_record(
        actor=actor,
        action=AuditAction.IMPORT,
        instance=pipeline,
        before=before,
        after=after,
        message=_("Imported from template %(name)s v%(v)d.") % {"name": template.name, "v": template.version},
    )
    plan.pipeline = pipeline
    plan.template = template


def _import_policy(plan: ImportPlan, ref, *, actor) -> QCPolicy | None:
    if ref is None:
        return None
    if isinstance(ref, str):
        return QCPolicy.objects.get(name=ref)  # existence checked by validation
    policy = QCPolicy.objects.filter(name=ref["name"]).first()
    if policy is not None:
        differs = any(name in ref and getattr(policy, name) != ref[name] for name in QC_POLICY_FIELDS)
        plan.add("reuse", "qc_policy", policy.name, differs=differs)
        return policy
    policy = QCPolicy(name=ref["name"], **{k: ref[k] for k in QC_POLICY_FIELDS if k in ref})
    policy.full_clean()
    policy.save()
    audit_record(actor=actor, action=AuditAction.IMPORT, instance=policy, after=audit_snapshot(policy))
    plan.add("create", "qc_policy", policy.name)
    return policy


# ---- Diff --------------------------------------------------------------------------------
def _value_diff(before: Any, after: Any, path: str, out: list[dict], stage: str | None = None) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}"
            if key not in before:
                out.append({"op": "added", "path": sub, "stage": stage, "before": None, "after": after[key]})
            elif key not in after:
                out.append({"op": "removed", "path": sub, "stage": stage, "before": before[key], "after": None})
            else:
                _value_diff(before[key], after[key], sub, out, stage)
        return
    if isinstance(before, list) and isinstance(after, list):
        for i in range(max(len(before), len(after))):
            sub = f"{path}[{i}]"
            if i >= len(before):
                out.append({"op": "added", "path": sub, "stage": stage, "before": None, "after": after[i]})
            elif i >= len(after):
                out.append({"op": "removed", "path": sub, "stage": stage, "before": before[i], "after": None})
            else:
                _value_diff(before[i], after[i], sub, out, stage)
        return
    if before != after or type(before) is not type(after):
        out.append({"op": "changed", "path": path, "stage": stage, "before": before, "after": after})


def template_diff(before: dict, after: dict) -> dict:
    """Structural diff of two template bodies: stages added/removed/reordered, values changed (JSON paths)."""
    old_stages = {s["id"]: s for s in before.get("stages", [])}
    new_stages = {s["id"]: s for s in after.get("stages", [])}
    old_order = [s["id"] for s in before.get("stages", [])]
    new_order = [s["id"] for s in after.get("stages", [])]
    common_old = [k for k in old_order if k in new_stages]
    common_new = [k for k in new_order if k in old_stages]
    changes: list[dict] = []
    top_keys = (set(before) | set(after)) - {"stages"}
    _value_diff({k: before.get(k) for k in top_keys}, {k: after.get(k) for k in top_keys}, "$", changes)
    for key in common_new:
        o, n = old_stages[key], new_stages[key]
        for name in ("kind", "name", "model_config"):
            if o.get(name) != n.get(name):
                changes.append(
                    {
                        "op": "changed",
                        "path": f"$.stages[{key}].{name}",
                        "stage": key,
                        "before": o.get(name),
                        "after": n.get(name),
                    }
                )
        _value_diff(o.get("config") or {}, n.get("config") or {}, f"$.stages[{key}].config", changes, key)
    moved = [
        {"stage": key, "before": old_order.index(key), "after": new_order.index(key)}
        for key in common_new
        if common_old.index(key) != common_new.index(key)
    ]
    return {
        "stages_added": [
            {"id": k, "kind": new_stages[k]["kind"], "position": new_order.index(k)}
            for k in new_order
            if k not in old_stages
        ],
        "stages_removed": [
            {"id": k, "kind": old_stages[k]["kind"], "position": old_order.index(k)}
            for k in old_order
            if k not in new_stages
        ],
        "reordered": common_old != common_new,
        "moved": moved,
        "order_before": old_order,
        "order_after": new_order,
        "changes": changes,
        "identical": template_checksum(before) == template_checksum(after),
    }
