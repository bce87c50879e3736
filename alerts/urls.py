"""Pages of the alerts app (rendered inside the admin shell)."""

from django.urls import path

from . import views

app_name = "alerts"
urlpatterns = [
    path("alerts/", views.inbox, name="inbox"),
    path("alerts/<int:pk>/", views.detail, name="detail"),
    path("alerts/<int:pk>/acknowledge/", views.acknowledge, name="acknowledge"),
    path("alerts/<int:pk>/resolve/", views.resolve, name="resolve"),
    path("alerts/lift-pause/", views.lift_pause, name="lift-pause"),
]
