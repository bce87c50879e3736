from django.urls import path

from . import pages

app_name = "core"
urlpatterns: list = [
    path("system/config/", pages.system_config, name="config"),
]
