"""AUTH_MODE=oidc: the start of the code flow and the provider's callback (404 in the other modes)."""

from django.urls import path

from .oidc import OidcCallbackView, OidcSignInView

urlpatterns = [
    path("authenticate/", OidcSignInView.as_view(), name="oidc_authentication_init"),
    path("callback/", OidcCallbackView.as_view(), name="oidc_authentication_callback"),
]
