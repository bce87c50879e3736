"""Rule kinds: each turns a rule into observations (scope, value, evidence) read from rollups or runs.

An evaluator only reads. Deciding transitions, writing alerts and the outbox is services.py's job,
so a kind is added here with one function and one line in EVALUATORS.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from pipelines.models import ModelConfig, Pipeline
from tasks.choices import RunStatus, StageRunStatus
from tasks.models import StageRun, TaskRun
from tasks.reasons import run_reason_code

from . import selectors
from .choices import BudgetPeriod, GroupBy, RuleKind
from .selectors import Scope
from .titles import title


class EvaluationUnavailable(Exception):
    """The data a rule needs cannot be read now; its alerts are left as they are (neither fired nor resolved)."""


@dataclass
class Observation:
    """What one evaluation saw for one scope of a rule; value None means "nothing to judge" (clear)."""

    scope_key: str
    value: float | None
    title: str
    evidence: dict = field(default_factory=dict)
    # The title as a code and parameters (alerts/titles.py), rendered in the reader's language.
    title_code: str = ""
    title_params: dict = field(default_factory=dict)
    project_id: int | None = None
    pipeline_id: int | None = None
    run_id: uuid.UUID | None = None
    stage_template: str = ""
    model_version: str = ""
    # Run rules: an operator's manual resolve holds while this token (e.g. the failure time) is unchanged.
    dedup_token: str = ""


# ---- Links ----------------------------------------------------------------------------------
def _first_url(names: list[str], *args) -> str | None:
    for name in names:
        try:
            return reverse(name, args=args)
        except NoReverseMatch:
            continue
    return None


def dashboard_url(*, scope: Scope, since: dt.datetime | None = None, until: dt.datetime | None = None) -> str:
    """The dashboard filtered to a scope and window (a plain path when the page is not installed)."""
    base = _first_url(["metrics:dashboard"]) or "/dashboard/"
    params = {}
    if scope.project_id:
        params["project"] = scope.project_id
    if scope.pipeline_id:
        params["pipeline"] = scope.pipeline_id
    if scope.stage_template:
        params["stage_template"] = scope.stage_template
    if scope.model_version:
        params["model_version"] = scope.model_version
    if since and until:
        params.update({"range": "custom", "start": since.isoformat(), "end": until.isoformat()})
    return f"{base}?{urlencode(params)}" if params else base


def run_url(run_id) -> str:
    """The run page, or its admin page when the run pages are not installed."""
    return (
        _first_url(["tasks:run-detail", "tasks:run_detail", "tasks:run"], run_id)
        or _first_url(["admin:tasks_taskrun_change"], run_id)
        or f"/tasks/taskrun/{run_id}/change/"
    )


# ---- Helpers --------------------------------------------------------------------------------
def _window(rule, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the rule's window, ending at the rollup watermark when rollups lag (no false zeros)."""
    end = now
    watermark = selectors.rollup_watermark()
    if watermark is not None and watermark < end:
        end = watermark
    return end - dt.timedelta(minutes=rule.window_minutes), end


def _thresholds(rule) -> dict:
    return {"warning": rule.warning_threshold, "critical": rule.critical_threshold}


def _group_scope(rule, group) -> tuple[str, Scope]:
    """The scope key and the narrowed scope of one group of a grouped rule."""
    base = Scope.of_rule(rule)
    column = rule.group_by
    if not column or group is None:
        return "", base
    narrowed = {
        GroupBy.PROJECT: {"project_id": group},
        GroupBy.PIPELINE: {"pipeline_id": group},
        GroupBy.STAGE_TEMPLATE: {"stage_template": group},
        GroupBy.MODEL_VERSION: {"model_version": group},
    }[column]
    values = {**base.__dict__, **narrowed}
    return f"{column}={group}", Scope(**values)


class _Labels:
    """Names for project/pipeline ids in titles, read once per evaluation."""

    def __init__(self):
        self._pipelines: dict[int, Pipeline] = {}
        self._projects: dict[int, str] = {}

    def preload(self, pipeline_ids):
        missing = [pk for pk in pipeline_ids if pk and pk not in self._pipelines]
        if missing:
            for p in Pipeline.objects.filter(pk__in=missing).select_related("project"):
                self._pipelines[p.pk] = p

    def pipeline(self, pk) -> Pipeline | None:
        if pk and pk not in self._pipelines:
            self.preload([pk])
        return self._pipelines.get(pk)

    def scope(self, scope: Scope) -> dict:
        """The scope's names, the parameters of a title (alerts/titles.py renders them)."""
        out = {"pipeline": None, "project": None, "stage": scope.stage_template, "model": scope.model_version}
        if scope.pipeline_id:
            p = self.pipeline(scope.pipeline_id)
            out["pipeline"] = p.name if p else str(scope.pipeline_id)
        elif scope.project_id:
            if scope.project_id not in self._projects:
                from catalog.models import Project

                self._projects.update(Project.objects.values_list("pk", "name")[:5000])
            out["project"] = str(self._projects.get(scope.project_id, scope.project_id))
        return out


def _owner_ids(labels: _Labels, scope: Scope) -> tuple[int | None, int | None]:
    project_id = scope.project_id
    if scope.pipeline_id and not project_id:
        p = labels.pipeline(scope.pipeline_id)
        project_id = p.project_id if p else None
    return project_id, scope.pipeline_id


def _active_scopes(rule, labels: _Labels) -> set:
    """Groups (or {None}) of the rule's scope that have an active run: drops and silences only matter then."""
    runs = TaskRun.objects.filter(status__in=RunStatus.active())
    if rule.project_id:
        runs = runs.filter(project_id=rule.project_id)
    if rule.pipeline_id:
        runs = runs.filter(pipeline_id=rule.pipeline_id)
    if rule.group_by == GroupBy.PROJECT:
        return set(runs.values_list("project_id", flat=True).distinct()[:1000])
    if rule.group_by == GroupBy.PIPELINE:
        return set(runs.values_list("pipeline_id", flat=True).distinct()[:1000])
    return {None} if runs.exists() else set()


def _metric_observation(rule, labels, group, value, *, unit, details, since, until) -> Observation:
    key, scope = _group_scope(rule, group)
    project_id, pipeline_id = _owner_ids(labels, scope)
    evidence = {
        "kind": rule.kind,
        "value": value,
        "unit": unit,
        "window": {
            "start": since.isoformat(),
            "end": until.isoformat(),
            "minutes": round((until - since).total_seconds() / 60),
        },
        "thresholds": _thresholds(rule),
        "details": details,
        "links": {"dashboard": dashboard_url(scope=scope, since=since, until=until)},
    }
    return Observation(
        scope_key=key,
        value=value,
        evidence=evidence,
        **title("metric", rule=rule.name, value=value, unit=unit, scope=labels.scope(scope)),
        project_id=project_id,
        pipeline_id=pipeline_id,
        stage_template=scope.stage_template,
        model_version=scope.model_version,
    )


# ---- Metric kinds ---------------------------------------------------------------------------
def failure_rate(rule, now) -> list[Observation]:
    """The worst of the record, batch and model-call failure rates in the window, per group."""
    since, until = _window(rule, now)
    labels = _Labels()
    rows = selectors.summary_totals(since=since, until=until, scope=Scope.of_rule(rule), group_by=rule.group_by)
    if rule.group_by == GroupBy.PIPELINE:
        labels.preload([r["group"] for r in rows])
    floor = max(1, rule.min_samples)
    out = []
    for row in rows:
        rates = {}
        for failed, total, label in (
            ("records_failed", "records_in", "records"),
            ("batches_failed", "batches", "batches"),
            ("requests_failed", "requests", "model_calls"),
        ):
            if row[total] >= floor:
                rates[label] = row[failed] / row[total]
        value = max(rates.values()) if rates else None
        details = {"rates": rates, "counts": {k: row[k] for k in selectors.SUM_FIELDS if "token" not in k}}
        out.append(
            _metric_observation(
                rule, labels, row["group"], value, unit="fraction", details=details, since=since, until=until
            )
        )
    return out


def throughput_drop(rule, now) -> list[Observation]:
    """How far records out fell against the previous window of the same length (0.6 = 60% lower)."""
    since, until = _window(rule, now)
    length = until - since
    labels = _Labels()
    scope = Scope.of_rule(rule)
    current = {
        r["group"]: r for r in selectors.summary_totals(since=since, until=until, scope=scope, group_by=rule.group_by)
    }
    previous = selectors.summary_totals(since=since - length, until=since, scope=scope, group_by=rule.group_by)
    if rule.group_by == GroupBy.PIPELINE:
        labels.preload([r["group"] for r in previous])
    active = _active_scopes(rule, labels)
    floor = max(1, rule.min_samples)
    out = []
    for prev in previous:
        group = prev["group"]
        cur = current.get(group, {"records_out": 0})
        value = None
        # A pipeline that finished its input is not "dropping": judge only while runs are active.
        if prev["records_out"] >= floor and (group in active or None in active):
            value = max(0.0, 1 - cur["records_out"] / prev["records_out"])
        details = {"records_out": cur["records_out"], "previous_records_out": prev["records_out"]}
        out.append(
            _metric_observation(rule, labels, group, value, unit="fraction", details=details, since=since, until=until)
        )
    return out


def latency_p95(rule, now) -> list[Observation]:
    """p95 latency of model calls in the window from the rollups' latency histograms."""
    since, until = _window(rule, now)
    labels = _Labels()
    rows = selectors.summary_totals(
        since=since,
        until=until,
        scope=Scope.of_rule(rule),
        group_by=rule.group_by,
        fields=("requests", "latency_ms_sum"),
        histogram=True,
    )
    if rule.group_by == GroupBy.PIPELINE:
        labels.preload([r["group"] for r in rows])
    floor = max(1, rule.min_samples)
    out = []
    for row in rows:
        value = selectors.histogram_percentile(row, 0.95) if row["requests"] >= floor else None
        mean = row["latency_ms_sum"] / row["requests"] if row["requests"] else None
        details = {"requests": row["requests"], "mean_ms": mean}
        out.append(
            _metric_observation(rule, labels, row["group"], value, unit="ms", details=details, since=since, until=until)
        )
    return out


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """The start of the calendar day, week (Monday) or month holding now, in the portal's time zone."""
    local = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.WEEK:
        local -= dt.timedelta(days=local.weekday())
    elif period == BudgetPeriod.MONTH:
        local = local.replace(day=1)
    return local


def token_budget(rule, now) -> list[Observation]:
    """Tokens used so far this period as a fraction of the budget (1.0 = the whole budget)."""
    since = period_start(rule.budget_period, now)
    labels = _Labels()
    rows = selectors.summary_totals(
        since=since,
        until=now,
        scope=Scope.of_rule(rule),
        group_by=rule.group_by,
        fields=("prompt_tokens", "completion_tokens", "requests"),
    )
    if rule.group_by == GroupBy.PIPELINE:
        labels.preload([r["group"] for r in rows])
    out = []
    for row in rows:
        used = row["prompt_tokens"] + row["completion_tokens"]
        value = used / rule.budget_tokens if used else None
        details = {
            "tokens": used,
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "budget": rule.budget_tokens,
            "period": rule.budget_period,
        }
        out.append(
            _metric_observation(
                rule, labels, row["group"], value, unit="fraction", details=details, since=since, until=now
            )
        )
    return out


def stale_data(rule, now) -> list[Observation]:
    """Minutes of lag: rollups behind raw events (unscoped), or no data from a scope with active runs."""
    labels = _Labels()
    if not (rule.project_id or rule.pipeline_id or rule.stage_template or rule.model_version or rule.group_by):
        watermark = selectors.rollup_watermark()
        oldest = selectors.oldest_unrolled_event()
        value = (now - oldest).total_seconds() / 60 if oldest else None
        details = {
            "watermark": watermark.isoformat() if watermark else None,
            "oldest_unrolled_event": oldest.isoformat() if oldest else None,
        }
        since = oldest or now
        obs = _metric_observation(rule, labels, None, value, unit="minutes", details=details, since=since, until=now)
        fields = title("rollups_behind", value=value)
        obs.title, obs.title_code, obs.title_params = fields["title"], fields["title_code"], fields["title_params"]
        return [obs]
    lookback = dt.timedelta(days=1)
    active = _active_scopes(rule, labels)
    out = []
    for row in selectors.last_activity(scope=Scope.of_rule(rule), now=now, group_by=rule.group_by, lookback=lookback):
        group, last = row["group"], row["last"]
        judged = last is not None and (group in active or None in active)
        value = (now - last).total_seconds() / 60 if judged else None
        details = {"last_data": last.isoformat() if last else None, "active_runs": bool(judged)}
        out.append(
            _metric_observation(
                rule, labels, group, value, unit="minutes", details=details, since=last or now - lookback, until=now
            )
        )
    return out


# ---- Run kinds ------------------------------------------------------------------------------
def run_failed(rule, now) -> list[Observation]:
    """One observation per run that ended failed (after its final retry) or crashed within the window."""
    since = now - dt.timedelta(minutes=rule.window_minutes)
    runs = list(selectors.failed_runs(scope=Scope.of_rule(rule), since=since))
    failed_stages = {}
    for stage in (
        StageRun.objects.filter(
            run__in=[r.pk for r in runs], status__in=(StageRunStatus.FAILED, StageRunStatus.CRASHED)
        )
        .order_by("run_id", "position")
        .values("run_id", "key", "position", "last_error", "status_reason")
    ):
        failed_stages.setdefault(stage["run_id"], stage)
    out = []
    for run in runs:
        stage = failed_stages.get(run.pk)
        reason = run.status_reason or (stage and (stage["status_reason"] or stage["last_error"])) or ""
        # The reason as a code (rendered in each reader's language by alerts/titles.py) when the run's
        # code explains its final status; otherwise the stored text of the run or its failed stage.
        code = run_reason_code(run)
        if code or run.status_reason:
            why = {"code": code, "params": run.status_params if code else {}, "text": run.status_reason}
        elif stage and (stage["status_reason"] or stage["last_error"]):
            why = {"code": "", "params": {}, "text": stage["status_reason"] or stage["last_error"]}
        else:
            why = None
        titled = title("run_ended", run=str(run), pipeline=run.pipeline.name, status=run.status, reason=why)
        ended = run.finished_at or run.updated_at
        out.append(
            Observation(
                scope_key=f"run={run.pk}",
                value=1.0,
                **titled,
                evidence={
                    "kind": rule.kind,
                    "value": 1,
                    "thresholds": _thresholds(rule),
                    "window": {"start": since.isoformat(), "end": now.isoformat(), "minutes": rule.window_minutes},
                    "details": {
                        "run": str(run.pk),
                        "status": run.status,
                        "reason": reason[:2000],
                        "finished_at": ended.isoformat(),
                        "stage": {"key": stage["key"], "position": stage["position"]} if stage else None,
                        "records_failed": run.records_failed,
                    },
                    "links": {
                        "run": run_url(run.pk),
                        "dashboard": dashboard_url(scope=Scope(run.project_id, run.pipeline_id)),
                    },
                },
                project_id=run.project_id,
                pipeline_id=run.pipeline_id,
                run_id=run.pk,
                dedup_token=ended.isoformat(),
            )
        )
    return out


def run_stuck(rule, now) -> list[Observation]:
    """Minutes since an active run last made progress (run, stage or batch change), for runs past a threshold."""
    lowest = min(t for t in (rule.warning_threshold, rule.critical_threshold) if t is not None)
    out = []
    for run in selectors.active_runs_with_progress(scope=Scope.of_rule(rule)):
        minutes = (now - run.progress_at).total_seconds() / 60
        if minutes < lowest:
            break  # ordered by progress: every later run moved more recently
        titled = title("run_stuck", run=str(run), pipeline=run.pipeline.name, minutes=minutes)
        out.append(
            Observation(
                scope_key=f"run={run.pk}",
                value=minutes,
                **titled,
                evidence={
                    "kind": rule.kind,
                    "value": minutes,
                    "unit": "minutes",
                    "thresholds": _thresholds(rule),
                    "details": {"run": str(run.pk), "status": run.status, "progress_at": run.progress_at.isoformat()},
                    "links": {"run": run_url(run.pk)},
                },
                project_id=run.project_id,
                pipeline_id=run.pipeline_id,
                run_id=run.pk,
                dedup_token=run.progress_at.isoformat(),
            )
        )
    return out


# ---- Breaker --------------------------------------------------------------------------------
def _breaker_store():
    """The breaker store the workers share (pipelines.model_configs decides: Redis, else a SQLite file)."""
    try:
        from pipelines.model_configs import breaker_store_default
    except ImportError as exc:
        raise EvaluationUnavailable(_("The model client is not installed.")) from exc
    return breaker_store_default()


def _breaker_key(config) -> str:
    from pipelines.model_configs import model_config_endpoint

    return model_config_endpoint(config).key


def breaker_open(rule, now) -> list[Observation]:
    """Minutes each model service's circuit breaker has been seen open or half-open (0 on first sight)."""
    store = _breaker_store()
    configs = ModelConfig.objects.all()
    if rule.model_version:
        configs = configs.filter(model_version=rule.model_version)
    first_seen = {
        a.scope_key: a.evidence.get("details", {}).get("open_since")
        for a in rule.alerts.filter(status__in=("firing", "acknowledged"))
    }
    out = []
    seen_keys = set()
    for config in configs[:500]:
        key = _breaker_key(config)
        if key in seen_keys:
            continue
        seen_keys.add(key)
        try:
            snap = store.snapshot(key, float(config.breaker_reset_seconds))
        except Exception as exc:  # the store is down: say so, and leave alerts as they are
            raise EvaluationUnavailable(_("Cannot read breaker state: %(error)s") % {"error": exc}) from exc
        scope_key = f"breaker={key}"[:200]
        value = None
        open_since = None
        if snap.state in ("open", "half_open"):
            open_since = first_seen.get(scope_key) or now.isoformat()
            value = (now - dt.datetime.fromisoformat(open_since)).total_seconds() / 60
        titled = title("breaker", key=key, state=snap.state)
        out.append(
            Observation(
                scope_key=scope_key,
                value=value,
                **titled,
                evidence={
                    "kind": rule.kind,
                    "value": value,
                    "unit": "minutes",
                    "thresholds": _thresholds(rule),
                    "details": {
                        "breaker": key,
                        "model_config": config.name,
                        "state": snap.state,
                        "failures": snap.failures,
                        "retry_after_s": snap.retry_after,
                        "open_since": open_since,
                    },
                    "links": {"dashboard": dashboard_url(scope=Scope(model_version=config.model_version))},
                },
                model_version=config.model_version,
            )
        )
    return out


EVALUATORS: dict[str, Callable] = {
    RuleKind.FAILURE_RATE: failure_rate,
    RuleKind.THROUGHPUT_DROP: throughput_drop,
    RuleKind.LATENCY_P95: latency_p95,
    RuleKind.TOKEN_BUDGET: token_budget,
    RuleKind.RUN_FAILED: run_failed,
    RuleKind.RUN_STUCK: run_stuck,
    RuleKind.BREAKER_OPEN: breaker_open,
    RuleKind.STALE_DATA: stale_data,
}


def observe(rule, now: dt.datetime) -> list[Observation]:
    """Everything a rule sees now (reads only); raises EvaluationUnavailable when its data cannot be read."""
    return EVALUATORS[rule.kind](rule, now)
