"""DRF's browsable-API login and logout (rest_framework.urls), with the login form throttled per address."""

from django.contrib.auth import views
from django.urls import path

from .auth import login_throttled

app_name = "rest_framework"
urlpatterns = [
    path(
        "login/",
        login_throttled(views.LoginView.as_view(template_name="rest_framework/login.html")),
        name="login",
    ),
    path("logout/", views.LogoutView.as_view(), name="logout"),
]
