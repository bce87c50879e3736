from django.urls import path

from . import views

app_name = "metrics-api"
urlpatterns = [
    path("", views.MetricsRootView.as_view(), name="api-root"),
    *[path(f"{name}/", view.as_view(), name=name) for name, view in views.DATASETS.items()],
    *[
        path(f"{name}/export.csv", views.CSVExportView.as_view(), {"dataset": name}, name=f"{name}-csv")
        for name in views.DATASETS
    ],
]
