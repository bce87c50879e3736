"""Pages of the metrics app (rendered inside the admin shell)."""

from django.urls import path

from . import views

app_name = "metrics"
urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/data/", views.dashboard_data, name="dashboard-data"),
]
