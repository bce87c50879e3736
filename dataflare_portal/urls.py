"""URL configuration: admin (the console), pages, the REST API under /api/v1/, health."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny

from dataflare_portal.core import health
from dataflare_portal.core.api.exceptions import api_not_found
from dataflare_portal.core.api.views import api_root
from dataflare_portal.core.metrics_endpoint import metrics_view
from dataflare_portal.core.views import favicon

api_v1 = [
    path("", api_root, name="api-root"),
    path("", include("dataflare_portal.core.api.urls")),
    path("catalog/", include("catalog.api.urls")),
    path("pipelines/", include("pipelines.api.urls")),
    path("tasks/", include("tasks.api.urls")),
    path("metrics/", include("metrics.api.urls")),
    path("alerts/", include("alerts.api.urls")),
    path("gateway/", include("gateway.api.urls")),
    path("schedules/", include("schedules.api.urls")),
    path("wasm/", include("wasmstages.api.urls")),
    # Last: an unknown API URL gets the JSON error shape (not the admin's catch-all login redirect).
    re_path(r"^.*$", api_not_found),
]

urlpatterns = [
    # Addresses a newcomer tries: the console lives at /, the API under /api/v1/.
    path("admin/", RedirectView.as_view(url="/", permanent=False)),
    re_path(r"^admin/(?P<rest>.+)$", RedirectView.as_view(url="/%(rest)s", permanent=False, query_string=True)),
    path("api/", RedirectView.as_view(pattern_name="api-root", permanent=False)),
    path("favicon.ico", favicon, name="favicon"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/", include(api_v1)),
    # The OpenAI-compatible gateway (per-project API keys, not sessions): docs/models.md.
    path("v1/", include("gateway.urls")),
    # The schema and its viewers are public (they describe, not expose, data).
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "api/docs/",
        # The split view serves its start-up script from a URL, so the CSP needs no inline script.
        SpectacularSwaggerSplitView.as_view(url_name="schema", permission_classes=[AllowAny]),
        name="swagger-ui",
    ),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="schema", permission_classes=[AllowAny], template_name="core/redoc.html"),
        name="redoc",
    ),
    path("metrics", metrics_view, name="prometheus-metrics"),
    path("api-auth/", include("dataflare_portal.core.auth_urls")),
    path("oidc/", include("dataflare_portal.core.oidc_urls")),
    path("", include("dataflare_portal.core.urls")),
    path("", include("catalog.urls")),
    path("", include("pipelines.urls")),
    path("", include("tasks.urls")),
    path("", include("metrics.urls")),
    path("", include("alerts.urls")),
    path("", admin.site.urls),
]

# Errors outside DRF views: the API's JSON error shape under /api/, Django's pages elsewhere.
handler400 = "dataflare_portal.core.api.exceptions.handler400"
handler403 = "dataflare_portal.core.api.exceptions.handler403"
handler404 = "dataflare_portal.core.api.exceptions.handler404"
handler500 = "dataflare_portal.core.api.exceptions.handler500"
