"""Settings for DataFlare Portal.

The environment (and an optional `.env`) is read here and nowhere else. With no configuration
at all the portal runs on the embedded default: SQLite and a SQLite-backed Celery transport in
`DATA_DIR`, a local workspace folder, no server needed. `DATABASE_URL`, `REDIS_URL` and
`CELERY_BROKER_URL` switch to PostgreSQL and Redis without code changes. Operational settings
that may change at run time live in `config.json` and the system-config page (see
`dataflare_portal/core/config.py`), not here.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
ENV_FILE = Path(env.str("ENV_FILE", default=str(BASE_DIR / ".env")))
if ENV_FILE.is_file():
    env.read_env(str(ENV_FILE))

DEBUG = env.bool("DEBUG", default=True)
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret(name: str | Path, make) -> str:
    """A development-only secret generated once and kept in DATA_DIR (never used when DEBUG is off)."""
    path = DATA_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Created 0600 in one step: no moment where another user could read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()


def _random_key() -> str:
    from django.core.management.utils import get_random_secret_key

    return get_random_secret_key()


def _api_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# Production secrets have no default: with DEBUG off they must come from the environment.
def _secret(name: str) -> str:
    """A secret taken literally: django-environ would read a value starting with "$" as the name of
    another variable, and Django's own key alphabet contains "$" (about one generated key in 50)."""
    return os.environ.get(name, "")


SECRET_KEY = _secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _local_secret("secret_key", _random_key)

# Keys that encrypt data-source credentials at rest, kept apart from SECRET_KEY. The first
# key encrypts; all of them decrypt, so a rotation adds a new key in front.
SECRETS_ENCRYPTION_KEYS = env.list("SECRETS_ENCRYPTION_KEYS", default=[])
if not SECRETS_ENCRYPTION_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured("SECRETS_ENCRYPTION_KEYS must be set when DEBUG is off.")
    SECRETS_ENCRYPTION_KEYS = [_local_secret("secrets.key", _fernet_key)]

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "dataflare_portal.core.api.exceptions.csrf_failure"

# Where the web server listens; the AUTH_MODE=none safety check reads it.
BIND_ADDRESS = env.str("BIND_ADDRESS", default="127.0.0.1")
AUTH_MODE = env.str("AUTH_MODE", default="none")
if AUTH_MODE not in {"none", "local", "oidc"}:
    raise ImproperlyConfigured(f"AUTH_MODE must be 'none', 'local' or 'oidc', not {AUTH_MODE!r}.")
AUTH_MODE_NONE_ALLOW_REMOTE = env.bool("AUTH_MODE_NONE_ALLOW_REMOTE", default=False)
# AUTH_MODE=none: non-browser clients authenticate with this token (`Authorization: Bearer <token>`),
# generated on first start (mode 0600) and printed by scripts/dev; browsers use the session + CSRF.
LOCAL_API_TOKEN_FILE = Path(env.str("LOCAL_API_TOKEN_FILE", default=str(DATA_DIR / "api_token")))
if AUTH_MODE == "none":
    _local_secret(LOCAL_API_TOKEN_FILE, _api_token)
# Reverse proxies (addresses or networks) whose X-Forwarded-For / X-Forwarded-Proto headers are
# believed. Empty (the default): those headers are ignored, the peer is REMOTE_ADDR.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])

INSTALLED_APPS = [
    "dataflare_portal.core.admin_apps.PortalAdminConfig",  # django.contrib.admin with the role-gated site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "dataflare_portal.core",
    "catalog",
    "pipelines",
    "tasks",
    "metrics",
    "alerts",
    "gateway",
    "schedules",
    "wasmstages",
]

MIDDLEWARE = [
    "dataflare_portal.core.middleware.RequestIdMiddleware",
    "dataflare_portal.core.middleware.SecurityHeadersMiddleware",
    # AUTH_MODE=none: refuse peers beyond loopback before anything else runs.
    "dataflare_portal.core.peerguard.PeerGuardMiddleware",
    # Orchestrator probes on the pod's own address: answered before host validation and the HTTPS redirect.
    "dataflare_portal.core.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "dataflare_portal.core.middleware.AuthModeMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "dataflare_portal.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dataflare_portal.core.context_processors.portal",
            ],
        },
    },
]

WSGI_APPLICATION = "dataflare_portal.wsgi.application"

# ---- Database ----------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'portal.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; IMMEDIATE transactions take the
    # write lock up front so concurrent writers wait (timeout) instead of failing to upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    if env.str("TEST_SQLITE_NAME", default=""):
        DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_SQLITE_NAME")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---- Cache, broker, Celery -----------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "dataflare_portal.core.cache.RedisCache", "LOCATION": REDIS_URL}}
else:
    # A file cache is shared by every process on the machine (web, workers, beat).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or f"sqla+sqlite:///{DATA_DIR / 'broker.sqlite3'}")
CELERY_BROKER_POLLING_INTERVAL = env.float("CELERY_BROKER_POLLING_INTERVAL", default=0.05)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Results live in the database rows; Celery keeps none.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=360)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Periodic schedules, declared in one place. Each entry names a thin task in an app's tasks.py.
# Each task runs its duty under a lease (core/duties.py); beat's scheduler records its own heartbeat and
# workers take the duties over while it is silent (system config `scheduler_stale_seconds`).
CELERY_BEAT_SCHEDULER = "dataflare_portal.core.beat:HeartbeatScheduler"
CELERY_BEAT_SCHEDULE = {
    "reap-batches": {"task": "tasks.reap", "schedule": env.float("REAPER_INTERVAL", default=10.0)},
    "rollup-metrics": {"task": "metrics.rollup", "schedule": env.float("ROLLUP_INTERVAL", default=30.0)},
    "prune-metrics": {"task": "metrics.prune", "schedule": 3600.0},
    "prune-gateway-requests": {"task": "gateway.prune", "schedule": 3600.0},
    "prune-workspaces": {"task": "tasks.prune_workspaces", "schedule": 3600.0},
    "evaluate-alerts": {"task": "alerts.evaluate", "schedule": env.float("ALERT_INTERVAL", default=60.0)},
    "send-notifications": {"task": "alerts.send_notifications", "schedule": 15.0},
    "run-schedules": {"task": "schedules.tick", "schedule": env.float("SCHEDULE_INTERVAL", default=15.0)},
}
# A slot later than this (seconds) when its tick comes counts as missed (downtime): the schedule's catch-up
# policy decides whether it still runs. Keep it above SCHEDULE_INTERVAL.
SCHEDULE_MISFIRE_GRACE = env.float("SCHEDULE_MISFIRE_GRACE", default=60.0)

# ---- Portal ------------------------------------------------------------------------------
# The workspace holds stage data between stages and published files; a shared volume in
# production.
WORKSPACE_DIR = Path(env.str("WORKSPACE_DIR", default=str(DATA_DIR / "workspace"))).resolve()
ARCHIVE_DIR = Path(env.str("ARCHIVE_DIR", default=str(DATA_DIR / "archive"))).resolve()
# File connectors may only read and write below these roots (path traversal is refused).
FILE_ROOTS = [
    Path(p).resolve() for p in env.list("FILE_ROOTS", default=[str(DATA_DIR / "files"), str(BASE_DIR / "demo")])
]
CONFIG_FILE = Path(env.str("CONFIG_FILE", default=str(BASE_DIR / "config.json")))
# Environment layer of the system config (core/config.py): PORTAL_<KEY>=value, e.g.
# PORTAL_DASHBOARD_REFRESH_SECONDS=5 (config.json and the system-config page override it).
CONFIG_ENV = {k[len("PORTAL_") :].lower(): v for k, v in os.environ.items() if k.startswith("PORTAL_")}
# The gateway trusts a cached key, model config or budget total this long (gateway/runtime.py): a key revoked
# or a model config changed in another process takes effect here within this many seconds.
GATEWAY_CACHE_SECONDS = env.float("GATEWAY_CACHE_SECONDS", default=5.0)
if not 0 <= GATEWAY_CACHE_SECONDS <= 300:
    raise ImproperlyConfigured("GATEWAY_CACHE_SECONDS must be between 0 and 300 seconds.")
# PostgreSQL: whether the gateway's metering commits wait for the WAL flush (gateway/services.py). Off by default:
# a commit is then durable against the portal dying at any moment (the row is in the server), not against the
# database server crashing in the next ~0.6 s (3 x wal_writer_delay) — as SQLite's synchronous=NORMAL above.
GATEWAY_METER_SYNCHRONOUS_COMMIT = env.bool("GATEWAY_METER_SYNCHRONOUS_COMMIT", default=False)
# The same for the audit entry of a metrics CSV download (a read the download waits on; metrics/services.py).
EXPORT_AUDIT_SYNCHRONOUS_COMMIT = env.bool("EXPORT_AUDIT_SYNCHRONOUS_COMMIT", default=False)
MODEL_SERVER_URL = env.str("MODEL_SERVER_URL", default="127.0.0.1:8001")
# SSRF guard: hosts users may point endpoints at even though they are private or loopback.
ALLOWED_PRIVATE_HOSTS = env.list("ALLOWED_PRIVATE_HOSTS", default=["127.0.0.1", "localhost"])
MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", default=5 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES
# Dataset uploads (admin and API) into a files data source: the largest file taken. Larger uploads are cut off
# while they stream (core/uploads.py), before they fill the disk.
DATASET_UPLOAD_MAX_BYTES = env.int("DATASET_UPLOAD_MAX_BYTES", default=2 * 1024 * 1024 * 1024)
FILE_UPLOAD_HANDLERS = [
    "dataflare_portal.core.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# Absolute links in alert emails and webhooks (e.g. https://portal.example.com); relative when empty.
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default="").rstrip("/")
# Email channel (alerts): Django's SMTP settings, read here like every other setting.
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST", "")
EMAIL_PORT = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="DataFlare Portal <dataflare@localhost>")

# ---- Auth --------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# Login rate limit (admin login, API login and the token endpoint): after LOGIN_FAILURE_LIMIT
# failures for one client address and username within LOGIN_FAILURE_WINDOW seconds, refuse.
# The OpenID Connect backend answers only in AUTH_MODE=oidc (and only to the provider's callback); in that
# mode the password backend admits only the break-glass sign-in of local administrators (/login/?local=1).
AUTHENTICATION_BACKENDS = [
    "dataflare_portal.core.auth.RateLimitedModelBackend",
    "dataflare_portal.core.oidc.OidcBackend",
]
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_WINDOW = env.int("LOGIN_FAILURE_WINDOW", default=900)
BUILTIN_OPERATOR_USERNAME = "operator"

# AUTH_MODE=oidc: sign-in through an OpenID Connect provider (docs/security.md "OpenID Connect").
OIDC_ISSUER = env.str("OIDC_ISSUER", default="").rstrip("/")
OIDC_CLIENT_ID = env.str("OIDC_CLIENT_ID", default="")
OIDC_CLIENT_SECRET = _secret("OIDC_CLIENT_SECRET")
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="OpenID Connect")
OIDC_SCOPES = env.str("OIDC_SCOPES", default="openid email profile")
# The claim that carries groups or roles (a dotted path reaches into objects: realm_access.roles), and
# which of its values give which portal role: "admin=portal-admins,operator=portal-operators,...".
OIDC_ROLE_CLAIM = env.str("OIDC_ROLE_CLAIM", default="groups")
OIDC_ROLE_MAP = env.str("OIDC_ROLE_MAP", default="admin=portal-admins,operator=portal-operators,viewer=portal-viewers")
OIDC_USERNAME_CLAIM = env.str("OIDC_USERNAME_CLAIM", default="preferred_username")
# Bearer tokens from the provider are accepted on the API when their audience is this (empty: not accepted).
OIDC_API_AUDIENCE = env.str("OIDC_API_AUDIENCE", default="")
OIDC_LEEWAY = env.int("OIDC_LEEWAY", default=30)  # seconds of clock skew allowed on exp/iat/nbf
OIDC_HTTP_TIMEOUT = env.float("OIDC_HTTP_TIMEOUT", default=10.0)
OIDC_DISCOVERY_TTL = env.int("OIDC_DISCOVERY_TTL", default=3600)
if AUTH_MODE == "oidc":
    from dataflare_portal.core.oidc_settings import check_issuer, parse_role_map

    _missing = [n for n in ("OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET") if not globals()[n]]
    if _missing:
        raise ImproperlyConfigured(f"AUTH_MODE=oidc needs {', '.join(_missing)}.")
    check_issuer(OIDC_ISSUER)
    parse_role_map(OIDC_ROLE_MAP)
# mozilla-django-oidc's own names; the provider's endpoints come from its discovery document (core/oidc.py).
OIDC_RP_CLIENT_ID = OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = OIDC_CLIENT_SECRET
OIDC_RP_SCOPES = OIDC_SCOPES
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_USE_PKCE = True
OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
OIDC_STORE_ID_TOKEN = True  # the id_token_hint of single logout
OIDC_TIMEOUT = OIDC_HTTP_TIMEOUT
OIDC_AUTHENTICATE_CLASS = "dataflare_portal.core.oidc.OidcSignInView"
OIDC_CALLBACK_CLASS = "dataflare_portal.core.oidc.OidcCallbackView"
LOGIN_REDIRECT_URL = "/"
LOGIN_REDIRECT_URL_FAILURE = "/login/?oidc_failed=1"
# With AUTH_MODE=local, `manage.py seed_demo` creates the user "admin" with this password when set.
DEMO_ADMIN_PASSWORD = _secret("DEMO_ADMIN_PASSWORD")

# ---- I18n --------------------------------------------------------------------------------
LANGUAGE_CODE = env.str("LANGUAGE_CODE", default="en")
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# ---- Static files ------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# ---- REST API ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": [
        "dataflare_portal.core.api.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Token first: its WWW-Authenticate header makes DRF answer anonymous requests 401, not 403.
    # The local API token (AUTH_MODE=none) and user tokens are headers, so they need no CSRF token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "dataflare_portal.core.api.authentication.LocalTokenAuthentication",
        "dataflare_portal.core.oidc.ProviderTokenAuthentication",  # AUTH_MODE=oidc: the provider's JWTs
        "dataflare_portal.core.api.authentication.PortalTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["dataflare_portal.core.permissions.RolePermission"],
    "DEFAULT_PAGINATION_CLASS": "dataflare_portal.core.api.pagination.NoCountPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "dataflare_portal.core.api.exceptions.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"login": env.str("LOGIN_RATE", default="10/min")},
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DataFlare Portal API",
    "DESCRIPTION": "Operations API of the DataFlare data factory portal.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # One stable component name per choice set (several models have a "status" field).
    "ENUM_NAME_OVERRIDES": {
        "AuditActionEnum": "dataflare_portal.core.models.AuditAction",
        "ConnectionStatusEnum": "catalog.choices.ConnectionStatus",
        "DatasetVersionStatusEnum": "catalog.choices.DatasetVersionStatus",
        "PipelineStatusEnum": "pipelines.choices.PipelineStatus",
        "RunStatusEnum": "tasks.choices.RunStatus",
        "StageRunStatusEnum": "tasks.choices.StageRunStatus",
        "BatchStatusEnum": "tasks.choices.BatchStatus",
        "ReviewDecisionEnum": "tasks.choices.ReviewDecision",
        "LotDecisionEnum": "tasks.choices.LotDecision",
        "GranularityEnum": "metrics.choices.Granularity",
        "AlertStatusEnum": "alerts.choices.AlertStatus",
        "SeverityEnum": "alerts.choices.Severity",
        "FireOutcomeEnum": "schedules.choices.FireOutcome",
        "NotificationStatusEnum": "alerts.choices.NotificationStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "dataflare_portal.core.api.schema.add_error_responses",
    ],
}

# ---- Security (production) ---------------------------------------------------------------
# X-Forwarded-Proto is believed only behind a configured proxy (which must overwrite the header);
# otherwise any client could claim HTTPS. gunicorn applies its own --forwarded-allow-ips too.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXIES else None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])

# ---- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="text")  # text | json
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'text' or 'json', not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "dataflare_portal.core.logging.RequestIdFilter"},
        "redact_secrets": {"()": "dataflare_portal.core.logging.RedactSecretsFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "dataflare_portal.core.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id", "redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# ---- Prometheus ------------------------------------------------------------------------------
# /metrics in the Prometheus text format; with METRICS_TOKEN set, scrapers must send
# "Authorization: Bearer <token>".
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
METRICS_TOKEN = _secret("METRICS_TOKEN")
