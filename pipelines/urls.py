"""Pages of the pipelines app (rendered inside the admin shell)."""

from django.urls import path

from . import views

app_name = "pipelines"
urlpatterns: list = [
    path("pipelines/template-versions/<path:name>", views.template_versions, name="template-versions"),
]
