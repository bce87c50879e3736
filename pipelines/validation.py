"""Validation of pipelines and templates before anything runs: errors with stage id + JSON path, live warnings.

`template_validate(body)` checks a parsed template; `pipeline_validate(pipeline)` checks a stored
pipeline by validating its exported template (same rules, same paths). Live-only checks (is the
model server reachable?) are warnings, never errors: a server that is down now may be up at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.utils.translation import gettext as _

from catalog.models import Dataset, Project

from .models import ModelConfig, Pipeline, QCPolicy

# ISO 2859-1 preferred AQL values (percent nonconforming) up to the model's 25 % cap.
PREFERRED_AQLS = (0.010, 0.015, 0.025, 0.040, 0.065, 0.10, 0.15, 0.25, 0.40, 0.65, 1.0, 1.5, 2.5, 4.0, 6.5, 10, 15, 25)
INSPECTION_LEVELS = ("I", "II", "III", "S-1", "S-2", "S-3", "S-4")
READ_KIND = "read"
PUBLISH_KIND = "publish"
QC_KIND = "qc"
PROBE_TIMEOUT_S = 0.5


@dataclass
class Issue:
    """One finding: which stage, which JSON path, what is wrong, and a stable code."""

    path: str
    message: str
    code: str
    stage: str | None = None

    def to_dict(self) -> dict:
        return {"stage": self.stage, "path": self.path, "message": self.message, "code": self.code}


@dataclass
class ValidationReport:
    """Errors block a run or an import; warnings are shown but do not block."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, path: str, message: str, code: str, stage: str | None = None) -> None:
        self.errors.append(Issue(path=path, message=str(message), code=code, stage=stage))

    def warn(self, path: str, message: str, code: str, stage: str | None = None) -> None:
        self.warnings.append(Issue(path=path, message=str(message), code=code, stage=stage))

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "errors": [i.to_dict() for i in self.errors],
            "warnings": [i.to_dict() for i in self.warnings],
        }

    def fields(self) -> dict[str, list[str]]:
        """Errors keyed by JSON path, for the API's error shape."""
        out: dict[str, list[str]] = {}
        for issue in self.errors:
            label = f"{issue.path} (stage {issue.stage})" if issue.stage else issue.path
            out.setdefault(issue.path, []).append(f"{label}: {issue.message}" if issue.stage else issue.message)
        return out

    def summary(self) -> str:
        if self.ok:
            return _("Valid.")
        first = self.errors[0]
        where = f"{first.path}" + (f" [{first.stage}]" if first.stage else "")
        return _("%(n)d error(s); first: %(where)s: %(msg)s") % {
            "n": len(self.errors),
            "where": where,
            "msg": first.message,
        }


class TemplateValidationFailed(ValueError):
    """Raised by services when a template or pipeline does not validate; carries the report."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


# ---- QC policy settings (shared by the QCPolicy model and inline policies in templates) ---
def qc_policy_problems(*, aql, inspection_level, rules) -> dict[str, str]:
    """Field -> message for a QC policy's sampling settings and rules."""
    problems: dict[str, str] = {}
    if aql is not None and not any(abs(float(aql) - p) < 1e-9 for p in PREFERRED_AQLS):
        problems["aql"] = _("AQL must be one of the ISO 2859-1 preferred values: %(values)s.") % {
            "values": ", ".join(f"{v:g}" for v in PREFERRED_AQLS)
        }
    if inspection_level not in INSPECTION_LEVELS:
        problems["inspection_level"] = _("Inspection level must be one of %(values)s.") % {
            "values": ", ".join(INSPECTION_LEVELS)
        }
    if rules:
        message = qc_rules_problem(rules)
        if message:
            problems["rules"] = message
    elif rules is not None and not isinstance(rules, list):
        problems["rules"] = _("Rules must be a list.")
    return problems


def qc_rules_problem(rules) -> str | None:
    """QC rules use the filter stage's rule format; returns a message with a JSON path, or None."""
    if not isinstance(rules, list):
        return _("Rules must be a list.")
    try:
        from .stagekinds import StageConfigError, registry

        kind = registry.get("filter")
    except Exception:  # the registry is another helper's module; without it, only the shape is checked
        return None
    try:
        kind.validate_config({"rules": rules, "on_fail": "quarantine"})
    except StageConfigError as exc:
        return f"{exc.path}: {exc.message}"
    return None


# ---- Templates -----------------------------------------------------------------------------
def _kind_of(name: str):
    from .stagekinds import registry

    try:
        return registry.get(name)
    except LookupError:
        return None


def _stage_path(index: int, *rest: str) -> str:
    return f"$.stages[{index}]" + "".join(f".{r}" for r in rest)


def _join_config_path(index: int, sub: str) -> str:
    sub = sub or "$"
    return _stage_path(index, "config") + sub[1:]


def template_validate(body: dict, *, probe: bool = True, project: Project | None = None) -> ValidationReport:
    """Validate a parsed template: kinds, configs, order rules, references; live probes as warnings."""
    from .templates_io import TemplateInputError, template_check_shape

    report = ValidationReport()
    try:
        template_check_shape(body)
    except TemplateInputError as exc:
        report.error(exc.path or "$", exc.message, exc.code)
        return report
    if body.get("parameters_schema"):
        from .parameters import parameters_schema_problems

        for where, message in parameters_schema_problems(body["parameters_schema"]).items():
            report.error(f"$.{where}", message, "invalid_parameters_schema")
    stages = body["stages"]
    seen: dict[str, int] = {}
    kinds = []
    for index, spec in enumerate(stages):
        key = spec["id"]
        if key in seen:
            report.error(
                _stage_path(index, "id"),
                _("Duplicate stage id %(id)r (first used by stage %(first)d).") % {"id": key, "first": seen[key]},
                "duplicate_stage_id",
                key,
            )
        else:
            seen[key] = index
        kind = _kind_of(spec["kind"])
        kinds.append(spec["kind"])
        if kind is None:
            report.error(
                _stage_path(index, "kind"),
                _("Unknown stage kind %(kind)r.") % {"kind": spec["kind"]},
                "unknown_kind",
                key,
            )
            continue
        _check_stage_config(report, index, key, kind, spec.get("config") or {})
        mc_name = spec.get("model_config")
        if getattr(kind, "needs_model_config", False) and not mc_name:
            report.error(
                _stage_path(index, "model_config"),
                _("Stage kind %(kind)s needs a model config.") % {"kind": spec["kind"]},
                "model_config_required",
                key,
            )
        if mc_name:
            mc = ModelConfig.objects.filter(name=mc_name).first()
            if mc is None:
                report.error(
                    _stage_path(index, "model_config"),
                    _("Model config %(name)r does not exist.") % {"name": mc_name},
                    "unknown_model_config",
                    key,
                )
            elif probe:
                _probe_model_server(report, index, key, mc)
    _check_order(report, body, stages, kinds)
    _check_references(report, body, project)
    return report


def _check_stage_config(report: ValidationReport, index: int, key: str, kind, config: dict) -> None:
    from .parameters import has_references
    from .stagekinds import StageConfigError

    if has_references(config):
        return  # checked with the run's parameters at run start (pipeline_validate(parameters=...))
    try:
        kind.validate_config(config)
    except StageConfigError as exc:
        report.error(_join_config_path(index, exc.path), exc.message, "invalid_config", key)
    except (TypeError, ValueError, KeyError) as exc:
        # A kind's validator choking on a wrong type is still the config's fault, not a server error.
        report.error(_stage_path(index, "config"), str(exc)[:300], "invalid_config", key)


def _check_order(report: ValidationReport, body: dict, stages: list[dict], kinds: list[str]) -> None:
    if not stages:
        return
    if READ_KIND not in kinds:
        # The engine reads the input dataset first when no read stage is given (docs/templates.md).
        report.warn("$.stages", _("No read stage: the input dataset is read before the first stage."), "implicit_read")
    for index, kind in enumerate(kinds):
        if kind == READ_KIND and index != 0:
            report.error(
                _stage_path(index, "kind"), _("The read stage must be the first stage."), "order", stages[index]["id"]
            )
        if kind == PUBLISH_KIND and index != len(kinds) - 1:
            report.error(
                _stage_path(index, "kind"), _("The publish stage must be the last stage."), "order", stages[index]["id"]
            )
    if PUBLISH_KIND not in kinds:
        report.warn("$.stages", _("No publish stage: the run will not produce a dataset version."), "no_publish")
    policy_ref = body.get("qc_policy")
    requires_review = _policy_requires_review(policy_ref)
    for index, kind in enumerate(kinds):
        if kind != QC_KIND:
            continue
        stage_policy = (stages[index].get("config") or {}).get("policy")
        if stage_policy is None and policy_ref is None:
            report.error("$.qc_policy", _("A qc stage needs a QC policy."), "qc_policy_required", stages[index]["id"])
        elif stage_policy is not None and not _policy_exists(stage_policy):
            report.error(
                _stage_path(index, "config", "policy"),
                _("QC policy %(ref)r does not exist.") % {"ref": stage_policy},
                "unknown_qc_policy",
                stages[index]["id"],
            )
    if requires_review and PUBLISH_KIND in kinds:
        pub = kinds.index(PUBLISH_KIND)
        if QC_KIND not in kinds[:pub]:
            report.error(
                _stage_path(pub, "kind"),
                _("The QC policy requires review: add a qc stage before publish."),
                "qc_before_publish",
                stages[pub]["id"],
            )
    publish_config = (stages[kinds.index(PUBLISH_KIND)].get("config") or {}) if PUBLISH_KIND in kinds else {}
    if PUBLISH_KIND in kinds and not body.get("output_dataset") and not publish_config.get("dataset"):
        report.error("$.output_dataset", _("A pipeline that publishes needs an output dataset."), "output_required")
    if not body.get("input_dataset"):
        report.warn("$.input_dataset", _("No input dataset: each run must name one."), "no_input")


def _policy_exists(ref) -> bool:
    if isinstance(ref, int):
        return QCPolicy.objects.filter(pk=ref).exists()
    return QCPolicy.objects.filter(name=ref).exists()


def _policy_requires_review(ref) -> bool:
    if ref is None:
        return False
    if isinstance(ref, dict):
        return bool(ref.get("require_review", True))
    policy = QCPolicy.objects.filter(name=ref).only("require_review").first()
    return bool(policy and policy.require_review)


def _check_references(report: ValidationReport, body: dict, project: Project | None) -> None:
    for name in ("input_dataset", "output_dataset"):
        ref = body.get(name)
        if ref and not Dataset.objects.filter(project__slug=ref["project"], name=ref["name"]).exists():
            report.error(
                f"$.{name}",
                _("Dataset %(project)s/%(name)s does not exist.") % {"project": ref["project"], "name": ref["name"]},
                "unknown_dataset",
            )
    ref = body.get("qc_policy")
    if isinstance(ref, str) and not QCPolicy.objects.filter(name=ref).exists():
        report.error("$.qc_policy", _("QC policy %(name)r does not exist.") % {"name": ref}, "unknown_qc_policy")
    elif isinstance(ref, dict):
        problems = qc_policy_problems(
            aql=ref.get("aql", 1.0), inspection_level=ref.get("inspection_level", "II"), rules=ref.get("rules", [])
        )
        for field_name, message in problems.items():
            report.error(f"$.qc_policy.{field_name}", message, "invalid_qc_policy")
    if project is None and body.get("project"):
        # The pipeline's project is created on import when missing; only its slug shape is checked here.
        from django.core.exceptions import ValidationError
        from django.core.validators import validate_slug

        try:
            validate_slug(body["project"])
        except ValidationError:
            report.error("$.project", _("The project must be a slug (letters, digits, - and _)."), "invalid_project")


def _probe_model_server(report: ValidationReport, index: int, key: str, mc: ModelConfig) -> None:
    """A quick readiness probe through the SSRF guard; any failure is only a warning (live state may differ)."""
    from .model_configs import model_config_probe

    try:
        health = model_config_probe(mc, deadline_s=PROBE_TIMEOUT_S)
        ok = health.ready and health.model_ready
        detail = "" if ok else (health.error or _("server or model not ready"))
    except Exception as exc:  # a probe must never fail validation
        ok, detail = False, str(exc)[:200]
    if not ok:
        report.warn(
            _stage_path(index, "model_config"),
            _("Model server %(endpoint)s is not reachable now: %(detail)s")
            % {"endpoint": mc.endpoint, "detail": detail},
            "model_server_unreachable",
            key,
        )


# ---- Pipelines -----------------------------------------------------------------------------
def pipeline_validate(pipeline: Pipeline, *, probe: bool = True, parameters: dict | None = None) -> ValidationReport:
    """Validate a stored pipeline (as its template JSON: same rules, same paths), with these run parameters."""
    from .templates_io import template_export_body

    body = template_export_body(pipeline)
    if parameters is not None:
        from .parameters import config_resolve

        for stage in body["stages"]:
            stage["config"] = config_resolve(stage["config"], parameters, partial=True)
    report = template_validate(body, probe=probe, project=pipeline.project)
    return report
