"""`manage.py seed_demo`: realistic, idempotent demo data for every page of the portal.

Configuration rows (projects, sources, datasets, model configs, QC policies, templates, pipelines,
alert rules) are upserted by natural key, so a second run changes nothing. History (35 days of
tasks, runs, stage runs, published versions and raw metrics events) is generated once from a
seeded random generator and left alone afterwards unless --reset-history is given. This is a
command, not core logic, so it may import every app's models.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from alerts.models import AlertRule
from catalog.models import Dataset, DatasetVersion, DataSource, Project
from dataflare_portal.core.services import roles_ensure
from metrics.models import (
    BatchEvent,
    MetricsSlice,
    MetricsStatusSlice,
    MetricsStatusSummary,
    MetricsSummary,
    TokenUsage,
)
from metrics.services import model_label
from pipelines.models import ModelConfig, Pipeline, PipelineStage, PipelineTemplate, QCPolicy
from tasks.models import Batch, QCLot, QuarantinedRecord, ReviewItem, StageRun, Task, TaskRun

from . import _demo_corpus as corpus

CHUNK = 2000
BATCH_EVENT_HAS_VERSION = any(f.name == "model_version" for f in BatchEvent._meta.concrete_fields)
DEMO_DIR_NAME = "demo"


# ---- Small helpers ---------------------------------------------------------------------------
def upsert(model: type[models.Model], lookup: dict, values: dict) -> tuple[models.Model, bool]:
    """Get a row by natural key and set `values`; validate and save only when something changed."""
    obj = model._default_manager.filter(**lookup).first()
    created = obj is None
    if created:
        obj = model(**lookup)
    changed = created
    for name, value in values.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    if changed:
        obj.full_clean()
        obj.save()
    return obj, created


@contextlib.contextmanager
def explicit_timestamps(*fields: models.DateTimeField):
    """Let bulk_create keep historical created_at values instead of auto_now_add's 'now'."""
    saved = [(f, f.auto_now_add, f.auto_now) for f in fields]
    for f in fields:
        f.auto_now_add = f.auto_now = False
    try:
        yield
    finally:
        for f, add, now in saved:
            f.auto_now_add, f.auto_now = add, now


def write_if_changed(path: Path, content: str) -> bool:
    """Write a demo file only when its content differs, so reruns leave mtimes alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
    return True


# ---- Static demo configuration ----------------------------------------------------------------
PROJECTS = [
    ("web-crawl-cleaning", "Web crawl cleaning 网页清洗", "Clean, deduplicate and score crawled web pages (中英文)."),
    ("chat-sft-annotation", "Chat SFT annotation 对话标注", "Annotate chat dialogues for supervised fine-tuning."),
    ("code-corpus", "Code corpus", "Deduplicate and count tokens of a permissively licensed code corpus."),
]

MODEL_CONFIGS = [
    # name, model_name, version, parameters, batch_size
    ("quality-scorer", "quality-scorer", "1", {"min_score": 0.5}, 64),
    ("token-counter", "token-counter", "1", {}, 128),
    ("annotator", "annotator", "1", {"tasks": ["language", "topic", "summary"], "max_tokens": 128}, 32),
    # A canary that the reference server does not serve (it has version 1 only): its history is
    # real in the metrics, and a "Test connection" on it shows how a missing version reports.
    ("annotator-canary", "annotator", "2", {"tasks": ["language", "topic", "summary"], "max_tokens": 128}, 32),
]

QC_POLICIES = [
    {
        "name": "Web text QC",
        "description": "Automatic checks on cleaned pages; AQL 1.0 sampling, no human review.",
        "rules": [
            {"type": "required", "fields": ["text"]},
            {"type": "length", "field": "text", "min": 20},
            {"type": "regex", "field": "text", "pattern": "<[a-z][^>]*>", "mode": "exclude", "ignore_case": True},
        ],
        "score_field": "score",
        "min_score": 0.5,
        "aql": 1.0,
        "require_review": False,
        "sample_size": None,
        "acceptance_number": None,
        "seed": 20261101,
    },
    {
        "name": "SFT annotation QC",
        "description": "Annotated dialogues: 50 sampled records reviewed by a person, at most 2 defects.",
        "rules": [
            {"type": "required", "fields": ["prompt", "response"]},
            {"type": "length", "field": "response", "min": 2},
        ],
        "score_field": "",
        "min_score": None,
        "aql": 2.5,
        "require_review": True,
        "sample_size": 50,
        "acceptance_number": 2,
        "seed": 20261102,
    },
]


def stage_specs(pipeline_key: str) -> list[dict]:
    """The stages of each demo pipeline (kind, config, model config name); configs follow the kinds' schemas."""

    def stage(kind, key, name, config, model=None):
        return {"kind": kind, "key": key, "name": name, "config": config, "model": model}

    read = stage("read", "read", "Read input", {})
    publish = stage("publish", "publish", "Publish", {"format": "jsonl"})
    normalize = stage(
        "clean",
        "clean",
        "Normalise Unicode and whitespace",
        {"steps": [{"op": "normalize_unicode", "form": "NFKC"}, {"op": "normalize_whitespace"}]},
    )
    if pipeline_key == "web-clean":
        return [
            read,
            stage(
                "clean",
                "clean",
                "Strip HTML, normalise",
                {
                    "text_field": "text",
                    "steps": [
                        {"op": "strip_html"},
                        {"op": "normalize_unicode", "form": "NFKC"},
                        {"op": "normalize_whitespace"},
                        {"op": "mask_pii", "types": ["email", "phone"]},
                    ],
                },
            ),
            stage(
                "filter",
                "filter",
                "Drop short pages and other languages",
                {
                    "text_field": "text",
                    "rules": [
                        {"type": "required", "fields": ["text", "url"]},
                        {"type": "length", "field": "text", "min": 20, "max": 20000},
                        {"type": "language", "field": "text", "allow": ["zh", "en"]},
                        {"type": "regex", "field": "text", "pattern": "^(Click here|加载中)", "mode": "exclude"},
                    ],
                },
            ),
            stage(
                "dedup",
                "dedup",
                "Exact and near duplicates",
                {"fields": ["text"], "near_duplicate": {"enabled": True, "threshold": 0.85}},
            ),
            stage(
                "model_inference",
                "score",
                "Quality score",
                {"input_field": "text", "output_mode": "merge"},
                model="quality-scorer",
            ),
            stage("qc", "qc", "QC acceptance", {}),
            publish,
        ]
    if pipeline_key == "web-tokens":
        return [
            read,
            normalize,
            stage(
                "model_inference",
                "count-tokens",
                "Count tokens",
                {"input_field": "text", "output_field": "tokens"},
                model="token-counter",
            ),
            publish,
        ]
    if pipeline_key == "chat-sft":
        return [
            read,
            stage(
                "filter",
                "filter",
                "Drop empty or truncated responses",
                {
                    "text_field": "response",
                    "on_fail": "quarantine",
                    "rules": [
                        {"type": "required", "fields": ["prompt", "response"]},
                        {"type": "length", "field": "response", "min": 8},
                    ],
                },
            ),
            normalize,
            stage(
                "model_inference",
                "annotate",
                "Annotate language, topic, summary",
                {"input_field": "text", "output_field": "annotation"},
                model="annotator",
            ),
            stage("qc", "qc", "Sampled human review", {}),
            publish,
        ]
    if pipeline_key == "code-dedup":
        return [
            read,
            stage(
                "filter",
                "filter-license",
                "Permissive licences only",
                {"rules": [{"type": "regex", "field": "license", "pattern": "^(MIT|Apache-2\\.0|BSD-3-Clause)$"}]},
            ),
            stage(
                "dedup",
                "dedup",
                "Exact duplicates",
                {"fields": ["text"], "normalize": {"lowercase": False, "whitespace": True, "unicode": True}},
            ),
            stage(
                "model_inference",
                "count-tokens",
                "Count tokens",
                {"input_field": "text", "output_field": "tokens"},
                model="token-counter",
            ),
            publish,
        ]
    if pipeline_key == "code-warehouse":
        return [
            read,
            stage(
                "filter",
                "filter-size",
                "Drop huge files",
                {"rules": [{"type": "length", "field": "text", "max": 100000}]},
            ),
            publish,
        ]
    raise KeyError(pipeline_key)


PIPELINES = [
    # key, project slug, name, input dataset, output dataset, QC policy, status, batch size
    (
        "web-clean",
        "web-crawl-cleaning",
        "Web page cleaning",
        "web_pages_raw",
        "web_pages_clean",
        "Web text QC",
        "active",
        5000,
    ),
    (
        "web-tokens",
        "web-crawl-cleaning",
        "Web token census",
        "web_pages_raw",
        "web_pages_tokens",
        None,
        "active",
        10000,
    ),
    (
        "chat-sft",
        "chat-sft-annotation",
        "Chat SFT annotation",
        "chat_dialogs_raw",
        "chat_sft_annotated",
        "SFT annotation QC",
        "active",
        2000,
    ),
    (
        "code-dedup",
        "code-corpus",
        "Code dedup and token count",
        "code_snippets_raw",
        "code_corpus_dedup",
        None,
        "active",
        5000,
    ),
    (
        "code-warehouse",
        "code-corpus",
        "Code from warehouse (PostgreSQL)",
        "code_files_table",
        "code_warehouse_export",
        None,
        "draft",
        5000,
    ),
]

# How a day of history looks per pipeline: runs per weekday / weekend day, input size range,
# per-stage drop rates, tokens per record (prompt, completion), mean call latency in ms.
PROFILES = {
    "web-clean": {
        "runs": (3, 1),
        "records": (40_000, 140_000),
        "filter": (0.08, 0.15),
        "dedup": (0.05, 0.12),
        "tokens": (360, 3),
        "latency": 45.0,
    },
    "web-tokens": {
        "runs": (1, 1),
        "records": (80_000, 160_000),
        "filter": (0, 0),
        "dedup": (0, 0),
        "tokens": (380, 0),
        "latency": 9.0,
    },
    "chat-sft": {
        "runs": (2, 0),
        "records": (8_000, 30_000),
        "filter": (0.03, 0.07),
        "dedup": (0, 0),
        "tokens": (420, 64),
        "latency": 190.0,
    },
    "code-dedup": {
        "runs": (1, 0),
        "records": (20_000, 60_000),
        "filter": (0.15, 0.30),
        "dedup": (0.20, 0.35),
        "tokens": (280, 0),
        "latency": 8.0,
    },
}
FAIL_REASONS = [
    ("score", "Model service unavailable after 4 attempts (UNAVAILABLE: failed to connect to 127.0.0.1:8001)."),
    ("annotate", "Model call deadline exceeded on 3 consecutive batches (DEADLINE_EXCEEDED after 10000 ms)."),
    ("read", "ConnectorError: input file changed while reading (checksum mismatch at record 48211)."),
    ("count-tokens", "Batch attempts exhausted: worker lost 3 times (lease expired)."),
]
CANCEL_REASONS = [
    "Cancelled by operator: wrong input snapshot selected.",
    "Cancelled by operator: superseded by a re-run with the new filter thresholds.",
    "已由操作员取消：输入数据需要重新抓取。",
]


class Command(BaseCommand):
    help = "Load realistic demo data: projects, data sources, datasets, pipelines, templates and 35 days of history."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=35, help="days of history to generate (default 35)")
        parser.add_argument(
            "--reset-history", action="store_true", help="delete the demo pipelines' runs and metrics, then regenerate"
        )
        parser.add_argument("--seed", type=int, default=20261122, help="random seed of the history (default fixed)")
        parser.add_argument(
            "--admin-password",
            default="",
            help="with AUTH_MODE=local, create or update the user 'admin' with this password "
            "(default: settings.DEMO_ADMIN_PASSWORD, from the environment)",
        )

    # ---- entry point ----------------------------------------------------------------------
    def handle(self, *args, days: int, reset_history: bool, seed: int, admin_password: str, verbosity: int, **opts):
        if days < 1 or days > 400:
            raise CommandError(_("--days must be between 1 and 400."))
        started = time.monotonic()
        self.verbosity = verbosity
        groups = roles_ensure()
        self._admin_user(admin_password or getattr(settings, "DEMO_ADMIN_PASSWORD", ""), groups)
        demo_root = self._demo_root()
        files = self._write_files(demo_root)
        with transaction.atomic():
            objs = self._configuration(demo_root, files)
        pipelines = objs["pipelines"]
        history_exists = TaskRun.objects.filter(pipeline__in=pipelines.values()).exists()
        if reset_history and history_exists:
            self._delete_history(objs)
            history_exists = False
        if history_exists:
            self._say(_("History already present; left as is (use --reset-history to regenerate)."))
        else:
            with transaction.atomic():
                stats = History(objs, days=days, seed=seed, rows=files).generate()
            self._say(
                _(
                    "History: %(runs)d runs, %(stage_runs)d stage runs, %(batch_events)d batch events, "
                    "%(token_events)d token usage events, %(versions)d published versions."
                )
                % stats
            )
            self._rollup(days)
            self._live_runs(pipelines)
        self._say(
            _("Demo data ready in %(s).1fs. Demo files: %(path)s")
            % {"s": time.monotonic() - started, "path": demo_root}
        )

    def _live_runs(self, pipelines) -> None:
        """Two real runs for the live views: the engine's workers execute and finish them like any run."""
        from dataflare_portal.core.services import builtin_operator
        from tasks.services import RunRefused, run_start

        for key in ("web-clean", "code-dedup"):
            try:
                run = run_start(pipeline=pipelines[key], actor=builtin_operator(), parameters={"demo": True})
            except RunRefused as exc:
                self._say(_("Live demo run of %(p)s not started: %(e)s") % {"p": pipelines[key].name, "e": exc})
                continue
            self._say(_("Started live demo run %(run)s (a worker executes it).") % {"run": run})

    def _say(self, text: str) -> None:
        if self.verbosity:
            self.stdout.write(text)

    # ---- users -------------------------------------------------------------------------------
    def _admin_user(self, password: str, groups) -> None:
        if settings.AUTH_MODE != "local" or not password:
            return
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"}
        )
        if created or not user.check_password(password):
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
        user.groups.add(groups["admin"])
        self._say(_("User 'admin' ready (AUTH_MODE=local)."))

    # ---- files -------------------------------------------------------------------------------
    def _demo_root(self) -> Path:
        roots = [Path(r).resolve() for r in settings.FILE_ROOTS]
        if not roots:
            raise CommandError(_("settings.FILE_ROOTS is empty: the demo files need an allowed root."))
        root = roots[0] / DEMO_DIR_NAME
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _write_files(self, root: Path) -> dict[str, list[dict]]:
        rows = {
            "web_pages.jsonl": corpus.web_pages(400),
            "chat_dialogs.jsonl": corpus.chat_dialogs(300),
            "code_snippets.csv": corpus.code_snippets(250),
        }
        for name, records in rows.items():
            content = corpus.to_csv(records) if name.endswith(".csv") else corpus.to_jsonl(records)
            write_if_changed(root / name, content)
        return rows

    # ---- configuration -------------------------------------------------------------------------
    def _configuration(self, demo_root: Path, files: dict[str, list[dict]]) -> dict:
        projects = {}
        for slug, name, description in PROJECTS:
            projects[slug], _created = upsert(Project, {"slug": slug}, {"name": name, "description": description})

        sources, datasets = {}, {}
        for slug, project in projects.items():
            sources[slug], _created = upsert(
                DataSource,
                {"project": project, "name": "demo-files"},
                {
                    "kind": "file",
                    "description": "Demo input files written by seed_demo.",
                    "config": {"root": DEMO_DIR_NAME},
                },
            )
        sources["pg"], _created = upsert(
            DataSource,
            {"project": projects["code-corpus"], "name": "code-warehouse"},
            {
                "kind": "postgresql",
                "description": "The code warehouse (a demo configuration; the database may not exist here).",
                "config": {
                    "host": "127.0.0.1",
                    "port": 5432,
                    "database": "dataflare_demo",
                    "user": "dataflare_reader",
                    "sslmode": "prefer",
                },
            },
        )
        ds_specs = [
            (
                "web-crawl-cleaning",
                "web_pages_raw",
                "jsonl",
                "web_pages.jsonl",
                "Crawled pages, mixed Chinese and English.",
            ),
            (
                "web-crawl-cleaning",
                "web_pages_clean",
                "jsonl",
                "published/web_pages_clean",
                "Cleaned, deduplicated, scored.",
            ),
            (
                "web-crawl-cleaning",
                "web_pages_tokens",
                "jsonl",
                "published/web_pages_tokens",
                "Pages with token counts.",
            ),
            ("chat-sft-annotation", "chat_dialogs_raw", "jsonl", "chat_dialogs.jsonl", "Prompt/response pairs 对话."),
            (
                "chat-sft-annotation",
                "chat_sft_annotated",
                "jsonl",
                "published/chat_sft_annotated",
                "Annotated SFT set.",
            ),
            ("code-corpus", "code_snippets_raw", "csv", "code_snippets.csv", "Code snippets from four languages."),
            ("code-corpus", "code_corpus_dedup", "jsonl", "published/code_corpus_dedup", "Deduplicated code."),
            (
                "code-corpus",
                "code_warehouse_export",
                "jsonl",
                "published/code_warehouse_export",
                "Export of the warehouse.",
            ),
        ]
        row_counts = {
            "web_pages.jsonl": len(files["web_pages.jsonl"]),
            "chat_dialogs.jsonl": len(files["chat_dialogs.jsonl"]),
            "code_snippets.csv": len(files["code_snippets.csv"]),
        }
        for slug, name, fmt, location, description in ds_specs:
            first = files.get(location, [{}])[0]
            schema = [
                {"name": k, "type": type(v).__name__.replace("str", "string"), "nullable": False}
                for k, v in first.items()
            ]
            datasets[name], _created = upsert(
                Dataset,
                {"project": projects[slug], "name": name},
                {
                    "source": sources[slug],
                    "format": fmt,
                    "location": location,
                    "description": description,
                    "schema": schema,
                    "row_count": row_counts.get(location),
                },
            )
        datasets["code_files_table"], _created = upsert(
            Dataset,
            {"project": projects["code-corpus"], "name": "code_files_table"},
            {
                "source": sources["pg"],
                "format": "table",
                "location": "public.code_files",
                "description": "Warehouse table of source files.",
            },
        )

        model_configs = {}
        for name, model_name, version, params, batch_size in MODEL_CONFIGS:
            model_configs[name], _created = upsert(
                ModelConfig,
                {"name": name},
                {
                    "endpoint": settings.MODEL_SERVER_URL,
                    "model_name": model_name,
                    "model_version": version,
                    "parameters": params,
                    "batch_size": batch_size,
                },
            )
        policies = {}
        for spec in QC_POLICIES:
            values = {k: v for k, v in spec.items() if k != "name"}
            policies[spec["name"]], _created = upsert(QCPolicy, {"name": spec["name"]}, values)

        pipelines = {}
        for key, slug, name, src, out, policy, status, batch_size in PIPELINES:
            pipeline, _created = upsert(
                Pipeline,
                {"project": projects[slug], "name": name},
                {
                    "description": f"Demo pipeline ({key}).",
                    "status": status,
                    "input_dataset": datasets[src],
                    "output_dataset": datasets[out],
                    "qc_policy": policies.get(policy),
                    "batch_size": batch_size,
                },
            )
            specs = stage_specs(key)
            for position, spec in enumerate(specs):
                upsert(
                    PipelineStage,
                    {"pipeline": pipeline, "key": spec["key"]},
                    {
                        "name": spec["name"],
                        "kind": spec["kind"],
                        "position": position,
                        "config": spec["config"],
                        "model_config": model_configs.get(spec.get("model")),
                    },
                )
            pipeline.stages.exclude(key__in=[s["key"] for s in specs]).delete()
            pipelines[key] = pipeline

        templates = self._templates(pipelines)
        self._alert_rules(projects, pipelines)
        return {
            "projects": projects,
            "sources": sources,
            "datasets": datasets,
            "model_configs": model_configs,
            "policies": policies,
            "templates": templates,
            "pipelines": pipelines,
        }

    def _templates(self, pipelines: dict[str, Pipeline]) -> dict[str, PipelineTemplate]:
        """Template versions made by the templates service, so exports, diffs and imports read them.

        Web page cleaning gets two versions: v1 without the quality score (made once, on the first
        seed), then the current shape. Syncing an unchanged pipeline makes no new version.
        """
        from pipelines.templates_io import pipeline_template_sync, template_export_body, template_version_save

        first = {}
        for key, pipeline in pipelines.items():
            if key == "web-clean" and not PipelineTemplate.objects.filter(name=pipeline.name).exists():
                body = template_export_body(pipeline)
                body["stages"] = [s for s in body["stages"] if s["id"] != "score"]
                body["description"] = "Before the quality score stage was added."
                template_version_save(body=body, actor=None, project=pipeline.project)
            pipeline_template_sync(pipeline=pipeline, actor=None)
            first[key] = PipelineTemplate.objects.filter(name=pipeline.name).order_by("version").first()
        return first

    def _alert_rules(self, projects, pipelines) -> None:
        rules = [
            (
                "Batch failure rate",
                {
                    "kind": "failure_rate",
                    "warning_threshold": 0.05,
                    "critical_threshold": 0.15,
                    "window_minutes": 60,
                    "description": "Share of failed batches across all pipelines.",
                },
            ),
            (
                "Annotator latency p95",
                {
                    "kind": "latency_p95",
                    "warning_threshold": 800.0,
                    "critical_threshold": 2000.0,
                    "window_minutes": 15,
                    "description": "p95 latency of annotator calls in ms.",
                },
            ),
            (
                "Web cleaning daily token budget",
                {
                    "kind": "token_budget",
                    "project": projects["web-crawl-cleaning"],
                    "budget_tokens": 2_000_000_000,
                    "budget_period": "day",
                    "warning_threshold": 0.8,
                    "critical_threshold": 1.0,
                    "description": "Tokens per day, warning at 80%.",
                },
            ),
            (
                "Run failed",
                {"kind": "run_failed", "critical_threshold": 1.0, "description": "A run failed after its final retry."},
            ),
        ]
        for name, values in rules:
            upsert(AlertRule, {"name": name}, values)

    # ---- history ------------------------------------------------------------------------------
    def _delete_history(self, objs) -> None:
        pipelines = list(objs["pipelines"].values())
        project_ids = [p.pk for p in objs["projects"].values()]
        with transaction.atomic():
            run_ids = list(TaskRun.objects.filter(pipeline__in=pipelines).values_list("id", flat=True))
            Task.objects.filter(pipeline__in=pipelines).delete()
            outputs = [p.output_dataset_id for p in pipelines if p.output_dataset_id]
            for version in DatasetVersion.objects.filter(dataset_id__in=outputs, run_id__in=run_ids):
                version.parents.clear()
                version.delete()
            BatchEvent.objects.filter(project_id__in=project_ids).delete()
            TokenUsage.objects.filter(project_id__in=project_ids).delete()
            # Every rollup table of the projects: the rebuild below re-rolls what their events still hold.
            for model in (MetricsSummary, MetricsStatusSummary, MetricsSlice, MetricsStatusSlice):
                model.objects.filter(project_id__in=project_ids).delete()
        self._say(_("Deleted the demo history (%(n)d runs).") % {"n": len(run_ids)})

    def _rollup(self, days: int) -> None:
        try:
            from metrics import services as metrics_services
        except ImportError:
            return
        rebuild = getattr(metrics_services, "metrics_rollup_rebuild", None) or getattr(
            metrics_services, "rollup_rebuild", None
        )
        if rebuild is None:
            self._say(_("The metrics rollup rebuild is not available; beat will roll the events up."))
            return
        end = timezone.now()
        rebuild(start=end - timedelta(days=days + 1), end=end)
        self._say(_("Rolled the metrics up."))


def pipeline_snapshot(pipeline: Pipeline) -> dict:
    """The snapshot a run keeps of its pipeline, in the engine's own format when the engine is present."""
    try:
        from tasks.services import _snapshot  # the engine's format; runs made here must look like its runs
    except ImportError:
        _snapshot = None
    if _snapshot is not None:
        return _snapshot(pipeline, pipeline.input_dataset)
    return {
        "pipeline": {"id": pipeline.pk, "name": pipeline.name, "batch_size": pipeline.batch_size},
        "stages": [
            {"position": i, "key": s.key, "kind": s.kind, "config": s.config, "stage_id": s.pk}
            for i, s in enumerate(pipeline.stages.order_by("position", "id"))
        ],
    }


class History:
    """Generates runs, stage runs, versions and raw metrics events from one seeded generator."""

    def __init__(self, objs: dict, *, days: int, seed: int, rows: dict[str, list[dict]]):
        self.objs = objs
        self.days = days
        self.rng = random.Random(seed)
        self.rows = rows
        self.now = timezone.now().replace(second=0, microsecond=0)
        self.tasks: list[Task] = []
        self.runs: list[TaskRun] = []
        self.stage_runs: list[StageRun] = []
        self.batch_events: list[BatchEvent] = []
        self.token_events: list[dict] = []
        self.versions: list[tuple[TaskRun, DatasetVersion]] = []
        self.lots: list[QCLot] = []
        self.review_items: list[ReviewItem] = []
        self.live_batches: list[Batch] = []
        self.version_numbers: dict[int, int] = {}
        self.snapshots = {key: pipeline_snapshot(p) for key, p in objs["pipelines"].items()}
        self.stages = {
            key: list(p.stages.select_related("model_config").order_by("position"))
            for key, p in objs["pipelines"].items()
        }

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    # ---- orchestration ------------------------------------------------------------------------
    def generate(self) -> dict:
        start_day = (self.now - timedelta(days=self.days)).replace(hour=0, minute=0)
        for day in range(self.days + 1):
            date = start_day + timedelta(days=day)
            weekend = date.weekday() >= 5
            for key, profile in PROFILES.items():
                count = profile["runs"][1 if weekend else 0] + (self.rng.random() < 0.35)
                hours = sorted(self.rng.sample(range(1, 22), k=count)) if count else []
                for hour in hours:
                    begin = date + timedelta(hours=hour, minutes=self.rng.randint(0, 59))
                    if begin > self.now - timedelta(hours=3):
                        continue  # the last hours hold the live runs made below
                    self._run(key, begin, name=f"{self.objs['pipelines'][key].name} · {begin:%Y-%m-%d %H:%M}")
        # Live state: one run waiting for QC review (a state that lasts until someone reviews). Runs in
        # flight are real runs started after the history (Command._live_runs): fabricated "running"
        # rows had no batches, so no worker could ever finish them, and the silence after their
        # fabricated events fired the throughput-drop rule ~20 minutes later.
        self._run(
            "chat-sft", self.now - timedelta(hours=2), name="Chat SFT annotation · awaiting review", live="review"
        )
        self._save()
        return {
            "runs": len(self.runs),
            "stage_runs": len(self.stage_runs),
            "batch_events": len(self.batch_events),
            "token_events": len(self.token_events),
            "versions": len(self.versions),
        }

    def _template_for(self, key: str, pipeline: Pipeline, begin: datetime) -> PipelineTemplate | None:
        """The template version a run used: the first version until three weeks ago, then the current one."""
        first = self.objs["templates"].get(key)
        if first is not None and (self.now - begin).days > 21:
            return first
        return pipeline.template

    def _outcome(self, begin: datetime) -> str:
        roll = self.rng.random()
        # An incident twelve days ago: the model server was flaky for a day.
        bad_day = (self.now - begin).days == 12
        if roll < (0.30 if bad_day else 0.05):
            return "failed"
        if roll < (0.33 if bad_day else 0.08):
            return "cancelled"
        return "succeeded"

    def _run(
        self, key: str, begin: datetime, *, name: str, live: str | None = None, retry_of: Task | None = None
    ) -> None:
        rng = self.rng
        pipeline = self.objs["pipelines"][key]
        profile = PROFILES[key]
        outcome = live or self._outcome(begin)
        task = retry_of or Task(
            project_id=pipeline.project_id,
            pipeline=pipeline,
            name=name,
            input_dataset=pipeline.input_dataset,
            parameters={"demo": True},
            created_at=begin,
        )
        if retry_of is None:
            self.tasks.append(task)
        number = 1 + sum(1 for r in self.runs if r.task is task)
        records = rng.randint(*profile["records"])
        bad_day = (self.now - begin).days == 12
        run = TaskRun(
            id=self.uuid(),
            task=task,
            number=number,
            project_id=pipeline.project_id,
            pipeline=pipeline,
            template=self._template_for(key, pipeline, begin),
            status="running",
            pipeline_snapshot=self.snapshots[key],
            created_at=begin,
            started_at=begin + timedelta(seconds=rng.randint(1, 20)),
        )
        self.runs.append(run)
        batch_size = pipeline.batch_size
        total_batches = max(1, math.ceil(records / batch_size))
        fail_stage = None
        if outcome == "failed":
            fail_stage, reason = rng.choice(
                [fr for fr in FAIL_REASONS if fr[0] in {s.key for s in self.stages[key]}] or FAIL_REASONS[2:3]
            )
        cancel_at = rng.randint(1, len(self.stages[key]) - 2) if outcome == "cancelled" else None
        running_at = rng.randint(2, len(self.stages[key]) - 2) if outcome == "running" else None

        clock = run.started_at
        flowing = records
        model_versions = []
        # Once a stage stops the run (fails, is cancelled, is still running or waits for review),
        # the stages after it never started.
        stopped: str | None = None
        run_reason = ""
        for position, stage in enumerate(self.stages[key]):
            sr = StageRun(
                id=self.uuid(),
                run=run,
                stage=stage,
                position=position,
                key=stage.key,
                kind=stage.kind,
                config=stage.config,
                total_batches=total_batches,
            )
            self.stage_runs.append(sr)
            if stopped is not None:
                sr.status = "cancelled" if stopped == "cancelled" else "pending"
                continue
            stage_in = flowing
            filtered = failed = 0
            if stage.kind == "filter":
                filtered = int(stage_in * rng.uniform(*profile["filter"]))
            elif stage.kind == "dedup":
                filtered = int(stage_in * rng.uniform(*profile["dedup"]))
            elif stage.kind == "clean":
                failed = int(stage_in * rng.uniform(0, 0.0005))
            elif stage.kind == "model_inference":
                failed = int(stage_in * rng.uniform(0.001, 0.004 if not bad_day else 0.02))
            stage_out = stage_in - filtered - failed
            done_batches, status = total_batches, "succeeded"
            if position == cancel_at:
                done_batches, status = rng.randint(0, total_batches - 1), "cancelled"
                run_reason = rng.choice(CANCEL_REASONS)
            elif stage.key == fail_stage:
                done_batches, status = rng.randint(0, total_batches - 1), "failed"
                run_reason = reason
                sr.last_error = reason
            elif position == running_at:
                # A running stage has work left: were its counters complete, the reaper would finish the
                # stage and a worker would run the next one over workspace files a demo run never had.
                done_batches, status = min(total_batches - 1, max(1, total_batches // 3)), "running"
            elif outcome == "review" and stage.kind == "publish":
                # As the engine leaves it: QC built the lot and succeeded; the publish unit waits for the
                # review and has not run (batches_done 0, so nothing completes it behind a worker's back).
                done_batches, status = 0, "waiting"
                run_reason = "Awaiting QC review of the sampled records."
                sr.total_batches = 1
                self.live_batches.append(
                    Batch(
                        id=self.uuid(),
                        stage_run=sr,
                        index=0,
                        status="waiting",
                        attempt=1,
                        input_ref={"from": position - 1},
                        not_before=None,  # set on save: the engine's 30 s wait from then
                        error=run_reason,
                        queued_at=clock,
                    )
                )
            if status != "succeeded":
                stopped = status
            share = done_batches / total_batches
            sr.status = status
            sr.status_reason = run_reason if status in {"failed", "cancelled", "waiting"} else ""
            sr.batches_done = done_batches
            sr.records_in = int(stage_in * share)
            sr.records_out = int(stage_out * share)
            sr.records_filtered = int(filtered * share)
            sr.records_failed = int(failed * share)
            sr.started_at = clock
            per_batch_ms = self._batch_ms(stage.kind, batch_size, profile)
            duration = timedelta(milliseconds=per_batch_ms * max(1, done_batches) / 2)  # two workers
            if status in {"succeeded", "failed", "cancelled"}:
                sr.finished_at = clock + duration
            model_config = stage.model_config
            version = model_config.model_version if model_config is not None else ""
            if model_config is not None and key == "chat-sft" and (self.now - begin).days < 10 and rng.random() < 0.25:
                version = "2"  # the canary took a quarter of the traffic for ten days
            label = model_label(model_config.model_name, version) if model_config is not None else ""
            self._batch_events(
                run, pipeline, sr, done_batches, per_batch_ms, stage.kind, label, failing=status == "failed"
            )
            if model_config is not None and done_batches:
                model_versions.append({"model": model_config.model_name, "version": version})
                p, c = self._token_events(
                    run, pipeline, sr, model_config, version, profile, done_batches, bad_day, failing=status == "failed"
                )
                run.prompt_tokens += p
                run.completion_tokens += c
            if stage.kind == "qc" and status == "succeeded" and outcome == "review":
                self._review_lot(sr, pipeline, stage_in)
            elif stage.kind == "qc" and status == "succeeded":
                self._qc_lot(sr, pipeline, stage_in)
            # Per-record stages stream behind the previous one; global stages wait for all input.
            clock = clock + duration * (0.35 if stage.kind in {"filter", "clean", "model_inference"} else 1.0)
            flowing = stage_out
        stages = [s for s in self.stage_runs if s.run is run]
        run.records_in = stages[0].records_in
        run.records_out = stages[-1].records_out if stages[-1].status == "succeeded" else 0
        run.records_filtered = sum(s.records_filtered for s in stages)
        run.records_failed = sum(s.records_failed for s in stages)
        run.status = stopped or "succeeded"
        run.status_reason = run_reason
        if run.status in {"succeeded", "failed", "cancelled"}:
            run.finished_at = max((s.finished_at for s in stages if s.finished_at), default=clock)
        if run.status == "succeeded" and pipeline.output_dataset_id:
            self._version(run, pipeline, model_versions)
        # A failed run is often retried by the operator an hour later, as run #2 of the same task.
        if run.status == "failed" and live is None and self.rng.random() < 0.6:
            retry_begin = run.finished_at + timedelta(minutes=self.rng.randint(20, 90))
            if retry_begin < self.now - timedelta(hours=3):
                self._run(key, retry_begin, name=name, retry_of=task)

    def _batch_ms(self, kind: str, batch_size: int, profile: dict) -> float:
        per_record = {"read": 0.02, "filter": 0.01, "clean": 0.05, "dedup": 0.04, "qc": 0.01, "publish": 0.03}
        if kind == "model_inference":
            return batch_size / 64 * profile["latency"] * self.rng.uniform(0.8, 1.3)
        return max(40.0, batch_size * per_record.get(kind, 0.02) * self.rng.uniform(0.7, 1.4))

    def _batch_events(self, run, pipeline, sr, done, per_batch_ms, kind, model_version, *, failing: bool) -> None:
        rng = self.rng
        base = sr.started_at
        counts = [
            self._split(getattr(sr, f), done)
            for f in ("records_in", "records_out", "records_filtered", "records_failed")
        ]
        for i in range(done):
            ts = base + timedelta(milliseconds=per_batch_ms * (i + 1) / 2)
            self.batch_events.append(
                BatchEvent(
                    ts=ts,
                    project_id=run.project_id,
                    pipeline_id=pipeline.pk,
                    run_id=run.id,
                    stage_template=kind,
                    records_in=counts[0][i],
                    records_out=counts[1][i],
                    records_filtered=counts[2][i],
                    records_failed=counts[3][i],
                    duration_ms=round(per_batch_ms * rng.uniform(0.8, 1.2), 1),
                    succeeded=True,
                    **self._event_version(model_version),
                )
            )
        if failing:
            for attempt in range(3):
                self.batch_events.append(
                    BatchEvent(
                        ts=base + timedelta(milliseconds=per_batch_ms * (done + 1 + attempt)),
                        project_id=run.project_id,
                        pipeline_id=pipeline.pk,
                        run_id=run.id,
                        stage_template=kind,
                        records_in=0,
                        records_out=0,
                        records_failed=0,
                        duration_ms=round(per_batch_ms * rng.uniform(1.0, 3.0), 1),
                        succeeded=False,
                        **self._event_version(model_version),
                    )
                )

    @staticmethod
    def _event_version(model_version: str) -> dict:
        """BatchEvent.model_version arrived with the metrics rollups; older schemas lack it."""
        return {"model_version": model_version} if BATCH_EVENT_HAS_VERSION and model_version else {}

    @staticmethod
    def _split(total: int, parts: int) -> list[int]:
        if parts <= 0:
            return []
        base, rest = divmod(total, parts)
        return [base + (1 if i < rest else 0) for i in range(parts)]

    def _token_events(
        self, run, pipeline, sr, model_config, version, profile, done, bad_day, *, failing
    ) -> tuple[int, int]:
        rng = self.rng
        model, call_batch = model_config.model_name, model_config.batch_size
        prompt_total = completion_total = 0
        per_batch = self._split(sr.records_in, done)
        latency = profile["latency"] * (2.5 if bad_day and model == "annotator" else 1.0)
        for i, records in enumerate(per_batch):
            requests = max(1, math.ceil(records / call_batch))
            prompt = int(records * profile["tokens"][0] * rng.uniform(0.85, 1.15))
            completion = int(records * profile["tokens"][1] * rng.uniform(0.8, 1.2))
            prompt_total += prompt
            completion_total += completion
            mean = latency * rng.uniform(0.8, 1.25)
            # Call latencies are long-tailed: a log-normal around the mean gives the charts a real p95.
            samples = [mean * rng.lognormvariate(-0.08, 0.4) for _ in range(requests)]
            ts = sr.started_at + timedelta(seconds=i * 3 + rng.random())
            self.token_events.append(
                {
                    "ts": ts,
                    "project_id": run.project_id,
                    "pipeline_id": pipeline.pk,
                    "run_id": run.id,
                    "stage_template": "model_inference",
                    "model_name": model,
                    "model_version": version,
                    "status_code": "OK",
                    "requests": requests,
                    "records": records,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "latency_ms_sum": round(sum(samples), 1),
                    "latency_ms_max": round(max(samples), 1),
                    "latency_ms_samples": samples,
                }
            )
            # Transient errors the client retried: a few per batch on bad days, rare otherwise.
            if rng.random() < (0.6 if bad_day else 0.05):
                code = rng.choice(["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"])
                errors = rng.randint(1, 4)
                self.token_events.append(
                    {
                        "ts": ts,
                        "project_id": run.project_id,
                        "pipeline_id": pipeline.pk,
                        "run_id": run.id,
                        "stage_template": "model_inference",
                        "model_name": model,
                        "model_version": version,
                        "status_code": code,
                        "requests": errors,
                        "records": 0,
                        "latency_ms_sum": round(errors * (10_000 if code == "DEADLINE_EXCEEDED" else mean / 4), 1),
                        "latency_ms_max": 10_000.0 if code == "DEADLINE_EXCEEDED" else round(mean, 1),
                    }
                )
        if failing:
            self.token_events.append(
                {
                    "ts": sr.started_at + timedelta(seconds=done * 3 + 5),
                    "project_id": run.project_id,
                    "pipeline_id": pipeline.pk,
                    "run_id": run.id,
                    "stage_template": "model_inference",
                    "model_name": model,
                    "model_version": version,
                    "status_code": "UNAVAILABLE",
                    "requests": 4,
                    "records": 0,
                    "latency_ms_sum": 12.0,
                    "latency_ms_max": 5.0,
                }
            )
        return prompt_total, completion_total

    # ---- QC and publishing ------------------------------------------------------------------
    @staticmethod
    def _sampling_plan(lot_size: int, policy: QCPolicy) -> tuple[int, int]:
        if policy.sample_size:
            return policy.sample_size, policy.acceptance_number or 0
        # ANSI/ASQ Z1.4 general inspection level II, AQL 1.0 (normal inspection).
        for limit, n, ac in ((10_000, 200, 5), (35_000, 315, 7), (150_000, 500, 10), (500_000, 800, 14)):
            if lot_size <= limit:
                return n, ac
        return 1250, 21

    def _qc_lot(self, sr: StageRun, pipeline: Pipeline, lot_size: int) -> None:
        policy = pipeline.qc_policy
        if policy is None:
            return
        n, ac = self._sampling_plan(lot_size, policy)
        auto = self.rng.randint(0, max(0, ac - 1))
        review = self.rng.randint(0, max(0, ac - auto)) if policy.require_review else 0
        self.lots.append(
            QCLot(
                stage_run=sr,
                policy=policy,
                lot_size=lot_size,
                sample_size=n,
                acceptance_number=ac,
                auto_defects=auto,
                review_defects=review,
                decision="accepted",
                evidence={"demo": True, "defects": auto + review},
                decided_at=sr.finished_at,
                created_at=sr.started_at,
            )
        )

    def _review_lot(self, sr: StageRun, pipeline: Pipeline, lot_size: int) -> None:
        policy = pipeline.qc_policy
        n, ac = self._sampling_plan(lot_size, policy)
        lot = QCLot(
            stage_run=sr,
            policy=policy,
            lot_size=lot_size,
            sample_size=n,
            acceptance_number=ac,
            decision="pending",
            evidence={"demo": True},
            created_at=sr.started_at,
        )
        self.lots.append(lot)
        records = self.rows["chat_dialogs.jsonl"]
        picks = self.rng.sample(range(len(records)), k=min(n, len(records)))
        self.review_items = [
            ReviewItem(lot=lot, sequence=i, record_key=records[idx]["id"], record=records[idx])
            for i, idx in enumerate(picks, start=1)
        ]

    def _version(self, run: TaskRun, pipeline: Pipeline, model_versions: list[dict]) -> None:
        dataset = pipeline.output_dataset
        number = self.version_numbers.get(dataset.pk)
        if number is None:
            number = DatasetVersion.objects.filter(dataset=dataset).aggregate(m=models.Max("version"))["m"] or 0
        number += 1
        self.version_numbers[dataset.pk] = number
        age = (self.now - run.finished_at).days
        archived = age > 28
        version = DatasetVersion(
            dataset=dataset,
            version=number,
            status="archived" if archived else "published",
            location=f"{dataset.location}/v{number}.jsonl",
            archive_location=f"archive/{dataset.name}/v{number}.jsonl.gz" if archived else "",
            checksum=hashlib.sha256(f"{run.id}:{run.records_out}".encode()).hexdigest(),
            record_count=run.records_out,
            size_bytes=run.records_out * self.rng.randint(700, 1400),
            run_id=run.id,
            template_version_id=run.template_id,
            model_versions=model_versions,
            qc_decision={"decision": "accepted"} if pipeline.qc_policy_id else {},
            lineage={"input_dataset": pipeline.input_dataset.name, "pipeline": pipeline.name, "run": str(run.id)},
            created_at=run.finished_at,
            published_at=run.finished_at,
            archived_at=run.finished_at + timedelta(days=28) if archived else None,
        )
        self.versions.append((run, version))

    # ---- persistence -------------------------------------------------------------------------
    def _save(self) -> None:
        with explicit_timestamps(Task._meta.get_field("created_at")):
            Task.objects.bulk_create(self.tasks, batch_size=CHUNK)
        for run in self.runs:
            run.task_id = run.task.pk
        with explicit_timestamps(TaskRun._meta.get_field("created_at")):
            TaskRun.objects.bulk_create(self.runs, batch_size=CHUNK)
        StageRun.objects.bulk_create(self.stage_runs, batch_size=CHUNK)
        for batch in self.live_batches:
            batch.not_before = timezone.now() + timedelta(seconds=30)
        Batch.objects.bulk_create(self.live_batches, batch_size=CHUNK)
        with explicit_timestamps(QCLot._meta.get_field("created_at")):
            QCLot.objects.bulk_create(self.lots, batch_size=CHUNK)
        items = self.review_items
        for item in items:
            item.lot_id = item.lot.pk
        ReviewItem.objects.bulk_create(items, batch_size=CHUNK)
        with explicit_timestamps(DatasetVersion._meta.get_field("created_at")):
            DatasetVersion.objects.bulk_create([v for _, v in self.versions], batch_size=CHUNK)
        for run, version in self.versions:
            run.output_version_id = version.pk
        TaskRun.objects.bulk_update([r for r, _ in self.versions], ["output_version"], batch_size=CHUNK)
        self._quarantine()
        BatchEvent.objects.bulk_create(self.batch_events, batch_size=CHUNK)
        try:
            from metrics.services import token_usage_record_many
        except ImportError:  # before the metrics services landed: plain rows, no latency histogram
            for row in self.token_events:
                row.pop("latency_ms_samples", None)
            TokenUsage.objects.bulk_create([TokenUsage(**row) for row in self.token_events], batch_size=CHUNK)
        else:
            for start in range(0, len(self.token_events), CHUNK):
                token_usage_record_many(self.token_events[start : start + CHUNK])

    def _quarantine(self) -> None:
        """Failed records with their reasons for the recent runs, so the 'failed records' views have rows."""
        recent = self.now - timedelta(days=3)
        inputs = {"web-crawl-cleaning": "web_pages.jsonl", "chat-sft-annotation": "chat_dialogs.jsonl"}
        slugs = {p.pk: p.slug for p in self.objs["projects"].values()}
        batches, records = [], []
        for sr in self.stage_runs:
            if sr.kind != "model_inference" or not sr.records_failed or sr.started_at is None or sr.started_at < recent:
                continue
            batch = Batch(
                id=self.uuid(),
                stage_run=sr,
                index=0,
                status="succeeded",
                attempt=1,
                canonical_attempt=1,
                records_in=min(sr.records_in, sr.run.pipeline.batch_size),
                records_failed=min(sr.records_failed, 3),
                queued_at=sr.started_at,
                started_at=sr.started_at,
                finished_at=sr.started_at + timedelta(seconds=20),
            )
            batches.append(batch)
            for i in range(batch.records_failed):
                pages = self.rows[inputs.get(slugs[sr.run.project_id], "code_snippets.csv")]
                record = pages[self.rng.randrange(len(pages))]
                records.append(
                    QuarantinedRecord(
                        stage_run=sr,
                        batch=batch,
                        attempt=1,
                        record_index=i * 17 + 3,
                        code="INVALID_ARGUMENT",
                        reason="Input text exceeds the model's 8192-token limit.",
                        record=record,
                    )
                )
        Batch.objects.bulk_create(batches, batch_size=CHUNK)
        QuarantinedRecord.objects.bulk_create(records, batch_size=CHUNK)
