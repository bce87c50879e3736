"""The access policy, written by hand from docs/security.md and docs/api.md — never derived from the views.

Roles rank anonymous < staff (a staff user in no role group) < viewer < operator < admin:
- viewer reads everything (every GET of the API and every page);
- operator also runs the operator actions: run, cancel, retry, resume, acknowledge, resolve, lift a
  budget pause, review and decide QC, test a connection or model config, validate, profile, archive,
  upload a file into a files source as a new dataset, re-run a run from a stage, reprocess its
  quarantined records, preview and start a backfill,
  and creates, edits, pauses and resumes schedules and dataset triggers;
- admin does everything else: every create, update and delete of configuration (projects, data
  sources, datasets, pipelines, stages, templates, model configs, QC policies, alert rules,
  channels and run webhooks, system config, WebAssembly stage modules), template import, QC override;
- "public" needs no login (health, schema, login pages, the token endpoint).
A staff user without a role group holds no role: it is refused like anonymous (403 instead of 401).

`test_permission_policy.py` checks every route the URL resolver knows against these tables and fails
on a route missing here, so a new endpoint or page needs a decision written down.
"""

PUBLIC, STAFF, VIEWER, OPERATOR, ADMIN = "public", "staff", "viewer", "operator", "admin"
RANK = {"anonymous": 0, STAFF: 1, VIEWER: 2, OPERATOR: 3, ADMIN: 4}

# ---- REST API: (method, path as the schema spells it) -> minimum role --------------------------------
API = {
    ("GET", "/api/v1/"): VIEWER,  # an index of links, for signed-in readers only (issue 11)
    ("POST", "/api/v1/auth/token/"): PUBLIC,
    ("GET", "/api/v1/logs/"): VIEWER,
    ("GET", "/api/v1/audit-log/"): VIEWER,
    ("GET", "/api/v1/audit-log/{pk}/"): VIEWER,
    ("GET", "/api/v1/config/"): VIEWER,
    ("GET", "/api/v1/config/{key}/"): VIEWER,
    ("PUT", "/api/v1/config/{key}/"): ADMIN,
    ("PATCH", "/api/v1/config/{key}/"): ADMIN,
    # catalog
    ("GET", "/api/v1/catalog/projects/"): VIEWER,
    ("POST", "/api/v1/catalog/projects/"): ADMIN,
    ("GET", "/api/v1/catalog/projects/{pk}/"): VIEWER,
    ("PUT", "/api/v1/catalog/projects/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/catalog/projects/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/catalog/projects/{pk}/"): ADMIN,
    ("GET", "/api/v1/catalog/data-sources/"): VIEWER,
    ("POST", "/api/v1/catalog/data-sources/"): ADMIN,
    ("GET", "/api/v1/catalog/data-sources/{pk}/"): VIEWER,
    ("PUT", "/api/v1/catalog/data-sources/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/catalog/data-sources/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/catalog/data-sources/{pk}/"): ADMIN,
    ("POST", "/api/v1/catalog/data-sources/{pk}/test/"): OPERATOR,
    ("POST", "/api/v1/catalog/data-sources/{pk}/upload/"): OPERATOR,  # data in, as running a pipeline (issue 16)
    ("GET", "/api/v1/catalog/datasets/"): VIEWER,
    ("POST", "/api/v1/catalog/datasets/"): ADMIN,
    ("GET", "/api/v1/catalog/datasets/{pk}/"): VIEWER,
    ("PUT", "/api/v1/catalog/datasets/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/catalog/datasets/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/catalog/datasets/{pk}/"): ADMIN,
    ("GET", "/api/v1/catalog/datasets/{pk}/preview/"): VIEWER,
    ("POST", "/api/v1/catalog/datasets/{pk}/profile/"): OPERATOR,
    ("GET", "/api/v1/catalog/dataset-versions/"): VIEWER,
    ("GET", "/api/v1/catalog/dataset-versions/{pk}/"): VIEWER,
    ("GET", "/api/v1/catalog/dataset-versions/{pk}/diff/"): VIEWER,
    # pipelines
    ("GET", "/api/v1/pipelines/pipelines/"): VIEWER,
    ("POST", "/api/v1/pipelines/pipelines/"): ADMIN,
    ("GET", "/api/v1/pipelines/pipelines/{pk}/"): VIEWER,
    ("PUT", "/api/v1/pipelines/pipelines/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/pipelines/pipelines/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/pipelines/pipelines/{pk}/"): ADMIN,
    ("GET", "/api/v1/pipelines/pipelines/{pk}/export/"): VIEWER,
    ("POST", "/api/v1/pipelines/pipelines/{pk}/validate/"): OPERATOR,
    ("GET", "/api/v1/pipelines/stages/"): VIEWER,
    ("POST", "/api/v1/pipelines/stages/"): ADMIN,
    ("GET", "/api/v1/pipelines/stages/{pk}/"): VIEWER,
    ("PUT", "/api/v1/pipelines/stages/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/pipelines/stages/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/pipelines/stages/{pk}/"): ADMIN,
    ("GET", "/api/v1/pipelines/templates/"): VIEWER,
    ("GET", "/api/v1/pipelines/templates/{pk}/"): VIEWER,
    ("GET", "/api/v1/pipelines/templates/{pk}/diff/"): VIEWER,
    ("GET", "/api/v1/pipelines/templates/{pk}/export/"): VIEWER,
    ("GET", "/api/v1/pipelines/templates/{pk}/versions/"): VIEWER,
    ("GET", "/api/v1/pipelines/templates/schema/"): VIEWER,
    ("POST", "/api/v1/pipelines/templates/validate/"): OPERATOR,
    ("POST", "/api/v1/pipelines/templates/import/"): ADMIN,
    ("GET", "/api/v1/pipelines/model-configs/"): VIEWER,
    ("POST", "/api/v1/pipelines/model-configs/"): ADMIN,
    ("GET", "/api/v1/pipelines/model-configs/{pk}/"): VIEWER,
    ("PUT", "/api/v1/pipelines/model-configs/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/pipelines/model-configs/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/pipelines/model-configs/{pk}/"): ADMIN,
    ("POST", "/api/v1/pipelines/model-configs/{pk}/test/"): OPERATOR,
    ("GET", "/api/v1/pipelines/qc-policies/"): VIEWER,
    ("POST", "/api/v1/pipelines/qc-policies/"): ADMIN,
    ("GET", "/api/v1/pipelines/qc-policies/{pk}/"): VIEWER,
    ("PUT", "/api/v1/pipelines/qc-policies/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/pipelines/qc-policies/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/pipelines/qc-policies/{pk}/"): ADMIN,
    # tasks
    ("GET", "/api/v1/tasks/runs/"): VIEWER,
    ("POST", "/api/v1/tasks/runs/"): OPERATOR,
    ("GET", "/api/v1/tasks/runs/{pk}/"): VIEWER,
    ("GET", "/api/v1/tasks/runs/{pk}/progress/"): VIEWER,
    ("POST", "/api/v1/tasks/runs/{pk}/cancel/"): OPERATOR,
    ("POST", "/api/v1/tasks/runs/{pk}/retry/"): OPERATOR,
    ("POST", "/api/v1/tasks/runs/{pk}/resume/"): OPERATOR,
    ("POST", "/api/v1/tasks/runs/{pk}/rerun/"): OPERATOR,  # a new run from a stage, as retry (issue 15)
    ("POST", "/api/v1/tasks/runs/{pk}/reprocess-quarantined/"): OPERATOR,
    ("POST", "/api/v1/tasks/backfills/preview/"): OPERATOR,
    ("POST", "/api/v1/tasks/backfills/"): OPERATOR,
    ("GET", "/api/v1/tasks/stage-runs/"): VIEWER,
    ("GET", "/api/v1/tasks/stage-runs/{pk}/"): VIEWER,
    ("GET", "/api/v1/tasks/batches/"): VIEWER,
    ("GET", "/api/v1/tasks/batches/{pk}/"): VIEWER,
    ("GET", "/api/v1/tasks/quarantined-records/"): VIEWER,
    ("GET", "/api/v1/tasks/quarantined-records/{pk}/"): VIEWER,
    ("GET", "/api/v1/tasks/qc-lots/"): VIEWER,
    ("GET", "/api/v1/tasks/qc-lots/{pk}/"): VIEWER,
    ("POST", "/api/v1/tasks/qc-lots/{pk}/decide/"): OPERATOR,
    ("POST", "/api/v1/tasks/qc-lots/{pk}/publish/"): OPERATOR,
    ("POST", "/api/v1/tasks/qc-lots/{pk}/override/"): ADMIN,
    ("GET", "/api/v1/tasks/review-items/"): VIEWER,
    ("GET", "/api/v1/tasks/review-items/{pk}/"): VIEWER,
    ("POST", "/api/v1/tasks/review-items/{pk}/decide/"): OPERATOR,
    ("GET", "/api/v1/tasks/dataset-versions/{pk}/"): VIEWER,
    ("POST", "/api/v1/tasks/dataset-versions/{pk}/archive/"): OPERATOR,
    ("GET", "/api/v1/tasks/workers/"): VIEWER,
    ("GET", "/api/v1/tasks/workers/{pk}/"): VIEWER,
    ("GET", "/api/v1/tasks/workers/overview/"): VIEWER,
    # metrics (read-only)
    **{
        ("GET", f"/api/v1/metrics/{p}"): VIEWER
        for p in (
            "",
            "history/",
            "kpis/",
            "live/",
            "request-structure/",
            "stages/",
            "timeseries/",
            "tokens/",
            "history/export.csv",
            "kpis/export.csv",
            "live/export.csv",
            "request-structure/export.csv",
            "stages/export.csv",
            "timeseries/export.csv",
            "tokens/export.csv",
        )
    },
    # alerts
    ("GET", "/api/v1/alerts/alerts/"): VIEWER,
    ("GET", "/api/v1/alerts/alerts/{pk}/"): VIEWER,
    ("POST", "/api/v1/alerts/alerts/{pk}/acknowledge/"): OPERATOR,
    ("POST", "/api/v1/alerts/alerts/{pk}/resolve/"): OPERATOR,
    ("GET", "/api/v1/alerts/budget-pauses/"): VIEWER,
    ("POST", "/api/v1/alerts/budget-pauses/lift/"): OPERATOR,
    ("GET", "/api/v1/alerts/notifications/"): VIEWER,
    ("GET", "/api/v1/alerts/notifications/{pk}/"): VIEWER,
    ("GET", "/api/v1/alerts/rules/"): VIEWER,
    ("POST", "/api/v1/alerts/rules/"): ADMIN,
    ("GET", "/api/v1/alerts/rules/{pk}/"): VIEWER,
    ("PUT", "/api/v1/alerts/rules/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/alerts/rules/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/alerts/rules/{pk}/"): ADMIN,
    ("GET", "/api/v1/alerts/channels/"): VIEWER,
    ("POST", "/api/v1/alerts/channels/"): ADMIN,
    ("GET", "/api/v1/alerts/channels/{pk}/"): VIEWER,
    ("PUT", "/api/v1/alerts/channels/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/alerts/channels/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/alerts/channels/{pk}/"): ADMIN,
    # Run webhooks post signed run events to a URL with a secret: configuration, as channels.
    ("GET", "/api/v1/alerts/webhooks/"): VIEWER,
    ("POST", "/api/v1/alerts/webhooks/"): ADMIN,
    ("GET", "/api/v1/alerts/webhooks/{pk}/"): VIEWER,
    ("PUT", "/api/v1/alerts/webhooks/{pk}/"): ADMIN,
    ("PATCH", "/api/v1/alerts/webhooks/{pk}/"): ADMIN,
    ("DELETE", "/api/v1/alerts/webhooks/{pk}/"): ADMIN,
    # gateway keys: operators create, update and revoke; viewers read metadata (never the secret)
    ("GET", "/api/v1/gateway/keys/"): VIEWER,
    ("POST", "/api/v1/gateway/keys/"): OPERATOR,
    ("GET", "/api/v1/gateway/keys/{pk}/"): VIEWER,
    ("PATCH", "/api/v1/gateway/keys/{pk}/"): OPERATOR,
    ("POST", "/api/v1/gateway/keys/{pk}/revoke/"): OPERATOR,
    ("GET", "/api/v1/gateway/requests/"): VIEWER,
    ("GET", "/api/v1/gateway/requests/{pk}/"): VIEWER,
    # schedules: operators create, edit, pause and resume schedules and dataset triggers; admins delete them
    ("GET", "/api/v1/schedules/schedules/"): VIEWER,
    ("POST", "/api/v1/schedules/schedules/"): OPERATOR,
    ("GET", "/api/v1/schedules/schedules/{pk}/"): VIEWER,
    ("PUT", "/api/v1/schedules/schedules/{pk}/"): OPERATOR,
    ("PATCH", "/api/v1/schedules/schedules/{pk}/"): OPERATOR,
    ("DELETE", "/api/v1/schedules/schedules/{pk}/"): ADMIN,
    ("POST", "/api/v1/schedules/schedules/{pk}/pause/"): OPERATOR,
    ("POST", "/api/v1/schedules/schedules/{pk}/resume/"): OPERATOR,
    ("GET", "/api/v1/schedules/schedules/{pk}/preview/"): VIEWER,
    ("GET", "/api/v1/schedules/schedule-fires/"): VIEWER,
    ("GET", "/api/v1/schedules/schedule-fires/{pk}/"): VIEWER,
    ("GET", "/api/v1/schedules/triggers/"): VIEWER,
    ("POST", "/api/v1/schedules/triggers/"): OPERATOR,
    ("GET", "/api/v1/schedules/triggers/{pk}/"): VIEWER,
    ("PUT", "/api/v1/schedules/triggers/{pk}/"): OPERATOR,
    ("PATCH", "/api/v1/schedules/triggers/{pk}/"): OPERATOR,
    ("DELETE", "/api/v1/schedules/triggers/{pk}/"): ADMIN,
    ("GET", "/api/v1/schedules/trigger-fires/"): VIEWER,
    ("GET", "/api/v1/schedules/trigger-fires/{pk}/"): VIEWER,
    # WebAssembly stage modules: uploading code that workers run is configuration, the admin's
    ("GET", "/api/v1/wasm/modules/"): VIEWER,
    ("POST", "/api/v1/wasm/modules/"): ADMIN,
    ("GET", "/api/v1/wasm/modules/{pk}/"): VIEWER,
    # The schema and its viewers describe the API, they expose no data.
    ("GET", "/api/schema/"): PUBLIC,
    ("GET", "/api/docs/"): PUBLIC,
    ("GET", "/api/redoc/"): PUBLIC,
}

# ---- Pages: URL name (namespace:name) -> {method: minimum role} --------------------------------------
PAGES = {
    "healthz": {"GET": PUBLIC},
    "readyz": {"GET": PUBLIC},
    "set_language": {"POST": PUBLIC},
    "prometheus-metrics": {"GET": PUBLIC},  # guarded by METRICS_TOKEN when set, not by a role
    "favicon": {"GET": PUBLIC},
    # The OpenAI-compatible gateway: guarded by a gateway API key (gateway/tests), not by a role or a session.
    "gateway:chat-completions": {"POST": PUBLIC},
    "gateway:completions": {"POST": PUBLIC},
    "gateway:embeddings": {"POST": PUBLIC},
    "gateway:models": {"GET": PUBLIC},
    "gateway:model": {"GET": PUBLIC},
    "gateway:not-found": {"GET": PUBLIC},  # a redirect to the static icon, so browsers stop logging 404s
    "rest_framework:login": {"GET": PUBLIC},
    "rest_framework:logout": {"POST": PUBLIC},
    # AUTH_MODE=oidc: the start of the provider's sign-in and its callback (404 in the other modes).
    "oidc_authentication_init": {"GET": PUBLIC},
    "oidc_authentication_callback": {"GET": PUBLIC},
    "core:config": {"GET": VIEWER, "POST": ADMIN},
    "pipelines:template-versions": {"GET": VIEWER},
    "tasks:run-detail": {"GET": VIEWER},
    "tasks:run-progress": {"GET": VIEWER},
    "tasks:run-action": {"POST": OPERATOR},
    "tasks:workers": {"GET": VIEWER},
    "tasks:version-detail": {"GET": VIEWER},
    "tasks:version-download": {"GET": OPERATOR},  # the data itself, audited as an export
    "metrics:dashboard": {"GET": VIEWER},
    "metrics:dashboard-data": {"GET": VIEWER},
    "alerts:inbox": {"GET": VIEWER},
    "alerts:detail": {"GET": VIEWER},
    "alerts:acknowledge": {"POST": OPERATOR},
    "alerts:resolve": {"POST": OPERATOR},
    "alerts:lift-pause": {"POST": OPERATOR},
    # The admin console: the shell is for staff; what a page shows or does follows the role.
    "admin:index": {"GET": VIEWER},  # staff without a role group are turned away (issue 11)
    "admin:app_list": {"GET": VIEWER},  # Django answers 404 to a user without the app's permissions
    "admin:login": {"GET": PUBLIC},
    "admin:logout": {"POST": PUBLIC},
    "admin:password_change_done": {"GET": VIEWER},
    "admin:autocomplete": {"GET": STAFF},  # Django checks the target model admin's view permission itself
    "admin:jsi18n": {"GET": VIEWER},
    "admin:view_on_site": {"GET": STAFF},
    "admin:pipelines_modelconfig_test": {"GET": VIEWER, "POST": OPERATOR},
    "admin:pipelines_pipeline_import": {"GET": ADMIN, "POST": ADMIN},
    "admin:tasks_reviewitem_review": {"GET": VIEWER, "POST": OPERATOR},
    "admin:tasks_reviewitem_review_item": {"GET": VIEWER, "POST": OPERATOR},
    "admin:catalog_datasource_test": {"POST": ADMIN},  # changing sources is the admin's; the test touches the outside
    "admin:catalog_datasetversion_diff": {"GET": VIEWER},  # reads two versions, writes nothing
    "admin:catalog_datasource_upload": {"GET": OPERATOR, "POST": OPERATOR},  # as the API's upload action
}

# Admin model pages (changelist, add, change, delete, history) follow the model permissions that
# `roles_sync` grants: view_* for viewer, custom actions for operator, add/change/delete for admin.
ADMIN_MODEL_PAGE_SUFFIXES = ("_changelist", "_add", "_change", "_delete", "_history")
