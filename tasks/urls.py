"""Pages of the tasks app (rendered inside the admin shell)."""

from django.urls import path

from . import views

app_name = "tasks"
urlpatterns: list = [
    path("runs/<uuid:pk>/", views.run_detail, name="run-detail"),
    path("runs/<uuid:pk>/progress.json", views.run_progress_json, name="run-progress"),
    path("runs/<uuid:pk>/<slug:action>/", views.run_action, name="run-action"),
    path("workers/", views.workers, name="workers"),
    path("versions/<int:pk>/", views.version_detail, name="version-detail"),
    path("versions/<int:pk>/download/", views.version_download, name="version-download"),
]
