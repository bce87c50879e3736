"""The gateway's OpenAI-compatible URLs, mounted at /v1/ (dataflare_portal/urls.py)."""

from django.urls import path, re_path

from . import views

app_name = "gateway"

urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("completions", views.completions, name="completions"),
    path("embeddings", views.embeddings, name="embeddings"),
    path("models", views.models, name="models"),
    path("models/<path:model>", views.models, name="model"),
    re_path(r"^(?P<rest>.*)$", views.not_found, name="not-found"),
]
