"""AUTH_MODE=oidc against a real OpenID provider (scripts/oidc-test-provider, panva's oidc-provider on loopback).

A real browser (Playwright + Debian's chromium) signs in through the provider's login form with each test
user and lands with the role the provider's groups give; the role is re-evaluated at the next sign-in; a user
without a portal group is refused with a page that says so; sign-out ends the provider's session too. The
API takes the provider's JWT access tokens and refuses tampered, expired, wrong-audience, other-issuer ones
and ones whose keys cannot be read, each with its own message. Local administrators keep a break-glass
password sign-in, audited.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from rest_framework.test import APIClient

from conftest import wait_until
from dataflare_portal.core import oidc
from dataflare_portal.core.models import AuditLogEntry, OidcIdentity
from dataflare_portal.core.oidc_settings import parse_role_map
from dataflare_portal.core.services import user_role

from .oidc_provider import API_AUDIENCE, CLIENT_SECRET, OTHER_AUDIENCE, Provider, node_or_skip

PROVIDER_NAME = "Test IdP"
EXPECTED = {"ada-admin": "admin", "oscar-ops": "operator", "vera-view": "viewer", "nina-norole": None}


# ---- Fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def provider(live_server, tmp_path_factory):
    node_or_skip()
    running = Provider(
        tmp_path_factory.mktemp("oidc"),
        redirect_uris=[live_server.url + "/oidc/callback/"],
        logout_uris=[live_server.url + "/login/"],
    )
    yield running
    running.stop()


def _use(settings, provider):
    settings.AUTH_MODE = "oidc"
    settings.OIDC_ISSUER = provider.issuer
    settings.OIDC_CLIENT_ID = settings.OIDC_RP_CLIENT_ID = "dataflare-portal"
    settings.OIDC_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_SCOPES = settings.OIDC_RP_SCOPES = "openid email profile groups"
    settings.OIDC_PROVIDER_NAME = PROVIDER_NAME
    settings.OIDC_ROLE_CLAIM = "groups"
    settings.OIDC_ROLE_MAP = "admin=portal-admins,operator=portal-operators,viewer=portal-viewers"
    settings.OIDC_API_AUDIENCE = API_AUDIENCE
    settings.OIDC_LEEWAY = 0
    oidc.provider_metadata_forget()


@pytest.fixture
def oidc_mode(settings, provider):
    _use(settings, provider)
    yield provider
    oidc.provider_metadata_forget()


# ---- Browser helpers ---------------------------------------------------------------------------------
def _sign_in(page, base: str, username: str, password: str, *, expect_provider_form: bool = True):
    page.goto(base + "/")
    assert "/login/" in page.url, page.url
    page.click("#oidc-sign-in")
    if expect_provider_form:
        page.wait_for_selector("#login")
        page.fill("#login", username)
        page.fill("#password", password)
        page.click("#sign-in")
    page.wait_for_url(lambda url: url.startswith(base), timeout=60_000)
    page.wait_for_load_state()


def _sign_out(page, base: str):
    page.goto(base + "/")
    page.locator("#logout-form button, #logout-form input[type=submit], #sign-out").first.click()


# ---- The code flow in a browser ----------------------------------------------------------------------
@pytest.mark.browser
def test_each_user_signs_in_through_the_provider_and_lands_with_their_role(
    oidc_mode, live_server, browser, monkeypatch, tmp_path
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    provider = oidc_mode
    for username, role in EXPECTED.items():
        context = browser.new_context(viewport={"width": 1366, "height": 900})
        page = context.new_page()
        _sign_in(page, live_server.url, username, provider.users[username]["password"])
        user = get_user_model().objects.get(oidc_identities__subject=username)
        assert user_role(user) == role, username
        identity = OidcIdentity.objects.get(issuer=provider.issuer, subject=username)
        assert identity.role == (role or "") and identity.last_seen is not None
        entry = AuditLogEntry.objects.filter(
            action="login", object_type="core.oidcidentity", object_id=str(identity.pk)
        )
        assert entry.count() == 1, username
        assert entry.get().after["role"] == (role or "") and entry.get().actor_id == user.pk
        if role is None:
            # Signed in, but no access: a page that says so, and every page turns the user away.
            assert page.locator("#no-role").is_visible(), page.content()[:500]
            page.screenshot(path=str(tmp_path / "no-role.png"))
            assert "holds no portal role" in page.locator(".errornote").inner_text()
            assert page.goto(live_server.url + "/catalog/project/").url.startswith(live_server.url + "/login/")
            assert page.locator("#no-role").is_visible()
        else:
            assert page.url == live_server.url + "/", page.url
            assert username in page.locator("#user-tools").text_content()
            add_project = page.goto(live_server.url + "/catalog/project/add/")
            assert (add_project.status == 200) == (role == "admin"), (username, add_project.status)
            assert page.goto(live_server.url + "/catalog/project/").status == 200
        context.close()
    # A provider account never takes over a local account of the same name.
    assert not get_user_model().objects.filter(username="ada-admin", is_superuser=True).exists()


@pytest.mark.browser
def test_the_role_is_evaluated_again_at_each_sign_in_and_logout_ends_the_provider_session(
    oidc_mode, live_server, browser, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    provider = oidc_mode
    provider.set_groups("oscar-ops", ["portal-operators"])
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    _sign_in(page, live_server.url, "oscar-ops", "pw-oscar")
    user = get_user_model().objects.get(oidc_identities__subject="oscar-ops")
    assert user_role(user) == "operator"

    # Single logout: the portal's sign-out goes on to the provider's end_session_endpoint.
    _sign_out(page, live_server.url)
    page.wait_for_url(lambda url: url.startswith(provider.issuer + "/session/end"), timeout=60_000)
    page.locator("button[name=logout], button[type=submit]").first.click()
    page.wait_for_url(lambda url: url.startswith(live_server.url + "/login/"), timeout=60_000)

    # Demoted at the provider: the next sign-in (through the provider's form again: its session is over).
    provider.set_groups("oscar-ops", ["portal-viewers"])
    _sign_in(page, live_server.url, "oscar-ops", "pw-oscar")
    user.refresh_from_db()
    assert user_role(user) == "viewer"
    assert page.goto(live_server.url + "/catalog/project/add/").status == 403
    last = AuditLogEntry.objects.filter(object_type="core.oidcidentity", action="login").order_by("id").last()
    assert (last.before["role"], last.after["role"]) == ("operator", "viewer")

    # Out of every portal group: signed in without a role, refused.
    _sign_out(page, live_server.url)
    page.wait_for_url(lambda url: url.startswith(provider.issuer + "/session/end"), timeout=60_000)
    page.locator("button[name=logout], button[type=submit]").first.click()
    page.wait_for_url(lambda url: url.startswith(live_server.url + "/login/"), timeout=60_000)
    provider.set_groups("oscar-ops", ["sales"])
    _sign_in(page, live_server.url, "oscar-ops", "pw-oscar")
    user.refresh_from_db()
    assert user_role(user) is None and not user.is_staff
    assert page.locator("#no-role").is_visible()
    context.close()


@pytest.mark.browser
@pytest.mark.parametrize("lang", ["en", "zh-hans"])
def test_the_sign_in_pages_fit_a_phone_and_speak_the_language(oidc_mode, live_server, browser, lang, tmp_path):
    from .browser import page_width, untranslated_on_page

    for width in (390, 1366):
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.add_cookies([{"name": "django_language", "value": lang, "url": live_server.url}])
        page = context.new_page()
        for path, selector in (("/login/", "#oidc-sign-in"), ("/login/?local=1", "#break-glass-note")):
            response = page.goto(live_server.url + path)
            assert response.status == 200
            assert page.locator(selector).is_visible()
            size = page_width(page)
            assert size["scroll"] <= size["window"], (path, width, size)
            if lang == "zh-hans":
                assert untranslated_on_page(page, [PROVIDER_NAME]) == [], path
            page.screenshot(path=str(tmp_path / f"login-{lang}-{width}-{'local' if 'local' in path else 'oidc'}.png"))
            if lang == "zh-hans" and path == "/login/":
                assert page.locator("#oidc-sign-in").inner_text().strip() == f"使用 {PROVIDER_NAME} 登录"
        context.close()


# ---- Break-glass ---------------------------------------------------------------------------------
def test_break_glass_local_admin_sign_in_works_only_for_local_admins_and_is_audited(
    oidc_mode, client, admin_user, operator_user
):
    # The plain sign-in page offers the provider, and a password posted there signs nobody in.
    page = client.get("/login/")
    assert page.status_code == 200
    assert b"oidc-sign-in" in page.content and b"?local=1" in page.content
    client.post("/login/", {"username": "alice-admin", "password": "pw-alice-admin"})
    assert "_auth_user_id" not in client.session

    # A local operator is refused on the break-glass form.
    refused = client.post("/login/?local=1", {"username": "oscar-operator", "password": "pw-oscar-operator"})
    assert refused.status_code == 200 and "_auth_user_id" not in client.session
    # The API's password doors are closed in this mode.
    token = client.post("/api/v1/auth/token/", {"username": "alice-admin", "password": "pw-alice-admin"})
    assert token.status_code == 400

    signed_in = client.post("/login/?local=1", {"username": "alice-admin", "password": "pw-alice-admin", "next": "/"})
    assert signed_in.status_code == 302 and client.session["_auth_user_id"] == str(admin_user.pk)
    entry = AuditLogEntry.objects.get(action="login", object_type="auth.user", object_id=str(admin_user.pk))
    assert "break-glass" in entry.message and entry.actor_id == admin_user.pk
    assert client.get("/").status_code == 200


def test_a_provider_user_cannot_use_the_break_glass_form(oidc_mode, client):
    user, role = oidc.oidc_user_sync(issuer=oidc_mode.issuer, claims={"sub": "x1", "groups": ["portal-admins"]})
    assert role == "admin"
    user.set_password("a-password-of-its-own")
    user.save()
    client.post("/login/?local=1", {"username": user.username, "password": "a-password-of-its-own"})
    assert "_auth_user_id" not in client.session


# ---- Bearer tokens on the API ----------------------------------------------------------------------
def _error(response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


def _api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_provider_tokens_are_accepted_with_the_role_of_their_groups(oidc_mode):
    provider = oidc_mode
    admin = _api(provider.access_token("ada-admin"))
    assert admin.get("/api/v1/catalog/projects/").status_code == 200
    created = admin.post("/api/v1/catalog/projects/", {"name": "From the IdP", "slug": "from-idp"}, format="json")
    assert created.status_code == 201, created.content
    assert AuditLogEntry.objects.filter(object_type="catalog.project", action="create").get().actor_name == "ada-admin"

    viewer = _api(provider.access_token("vera-view"))
    assert viewer.get("/api/v1/catalog/projects/").status_code == 200
    status, code, _ = _error(viewer.post("/api/v1/catalog/projects/", {"name": "No", "slug": "no"}, format="json"))
    assert (status, code) == (403, "permission_denied")

    nobody = _api(provider.access_token("nina-norole"))
    assert nobody.get("/api/v1/catalog/projects/").status_code == 403

    # The role follows the token: demoted at the provider, the next token is a viewer's.
    provider.set_groups("ada-admin", ["portal-viewers"])
    demoted = _api(provider.access_token("ada-admin"))
    assert demoted.post("/api/v1/catalog/projects/", {"name": "No", "slug": "no2"}, format="json").status_code == 403
    provider.set_groups("ada-admin", ["portal-admins", "staff"])


def _tamper(token: str, **changes) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


def test_tampered_expired_and_wrong_audience_tokens_are_refused_with_their_reason(oidc_mode):
    provider = oidc_mode
    viewer_token = provider.access_token("vera-view")
    assert _api(viewer_token).get("/api/v1/catalog/projects/").status_code == 200

    tampered = _tamper(viewer_token, groups=["portal-admins"])
    assert _error(_api(tampered).get("/api/v1/catalog/projects/")) == (
        401,
        "token_signature",
        "The access token's signature is not valid.",
    )

    wrong_audience = provider.access_token("vera-view", resource=OTHER_AUDIENCE)
    assert _error(_api(wrong_audience).get("/api/v1/catalog/projects/")) == (
        401,
        "token_audience",
        "The access token is meant for another audience.",
    )

    short = provider.access_token("vera-view", client="dataflare-cli-short")
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    wait_until(lambda: time.time() > expires + 1, timeout=60, interval=0.2)
    assert _error(_api(short).get("/api/v1/catalog/projects/")) == (
        401,
        "token_expired",
        "The access token has expired.",
    )

    garbage = _api("aaa.bbb.ccc").get("/api/v1/catalog/projects/")
    assert _error(garbage)[:2] == (401, "token_invalid")
    assert AuditLogEntry.objects.filter(action="create").count() == 0


def test_tokens_of_another_issuer_and_unreadable_keys_are_refused(oidc_mode, settings, tmp_path):
    provider = oidc_mode
    other = Provider(tmp_path)
    try:
        foreign = other.access_token("ada-admin")
        assert _error(_api(foreign).get("/api/v1/catalog/projects/")) == (
            401,
            "token_issuer",
            "The access token was issued by another issuer.",
        )
        # Signed by the other provider's key but claiming our issuer: no key of ours matches.
        forged = _tamper(foreign, iss=provider.issuer)
        assert _error(_api(forged).get("/api/v1/catalog/projects/"))[:2] == (401, "token_signature")

        # The portal trusts the other provider, which then goes away before its keys were fetched.
        _use(settings, other)
        oidc.provider_metadata()  # discovery cached, keys not yet read
        token = other.access_token("vera-view")
    finally:
        other.stop()
    assert _error(_api(token).get("/api/v1/catalog/projects/")) == (
        401,
        "provider_keys_unavailable",
        "The identity provider's signing keys could not be read.",
    )


# ---- Hostile callbacks ------------------------------------------------------------------------------
def test_forged_or_stray_callbacks_sign_nobody_in(oidc_mode, client):
    # No sign-in was started in this session: back to the sign-in page, which says it did not complete.
    stray = client.get("/oidc/callback/?code=x&state=y")
    assert stray.status_code == 302 and stray["Location"] == "/login/?oidc_failed=1"
    assert "did not complete" in client.get(stray["Location"]).content.decode()
    # A sign-in was started, but the state coming back is not the one sent: refused, named, nobody signed in.
    started = client.get("/oidc/authenticate/?next=/catalog/project/")
    assert started.status_code == 302 and started["Location"].startswith(oidc_mode.issuer + "/auth?")
    assert "code_challenge_method=S256" in started["Location"]
    forged = client.get("/oidc/callback/?code=x&state=not-the-one-sent")
    assert forged.status_code == 400 and "failed" in forged.content.decode()
    # The provider said no (the user cancelled): back to the sign-in page.
    denied = client.get("/oidc/callback/?error=access_denied&state=whatever")
    assert denied.status_code == 302 and "_auth_user_id" not in client.session
    assert not OidcIdentity.objects.exists()


def test_the_oidc_urls_do_not_exist_in_the_other_modes(client, settings, db):
    for mode in ("none", "local"):
        settings.AUTH_MODE = mode
        assert client.get("/oidc/authenticate/").status_code == 404
        assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_an_unreachable_provider_is_named_on_the_sign_in_page(settings, client, db):
    from conftest import free_port

    settings.AUTH_MODE = "oidc"
    settings.OIDC_ISSUER = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.OIDC_PROVIDER_NAME = PROVIDER_NAME
    oidc.provider_metadata_forget()
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 502
    assert "configuration could not be read" in response.content.decode()


# ---- The permission policy holds for users whose role comes from the provider ----------------------
@pytest.mark.parametrize("persona", ["staff", "viewer", "operator", "admin"])
def test_the_written_policy_holds_for_oidc_mapped_users(persona, settings, db, monkeypatch):
    from . import test_permission_policy as policy

    settings.AUTH_MODE = "oidc"
    settings.OIDC_ISSUER = "https://idp.example.test"
    settings.OIDC_ROLE_MAP = "admin=portal-admins,operator=portal-operators,viewer=portal-viewers"
    mapped = {}
    for role, group in (("admin", "portal-admins"), ("operator", "portal-operators"), ("viewer", "portal-viewers")):
        mapped[role], got = oidc.oidc_user_sync(issuer=settings.OIDC_ISSUER, claims={"sub": role, "groups": [group]})
        assert got == role
    if persona == "staff":  # signed in through the provider with no portal group: no role
        nobody, got = oidc.oidc_user_sync(issuer=settings.OIDC_ISSUER, claims={"sub": "n", "groups": ["x"]})
        assert got is None
        monkeypatch.setattr(policy, "_user", lambda persona, *users: nobody)
    policy.test_every_api_route_enforces_the_written_policy_on_real_objects(
        persona, settings, mapped["admin"], mapped["operator"], mapped["viewer"]
    )
    client = Client()
    policy.test_every_page_enforces_the_written_policy(
        persona, client, settings, mapped["admin"], mapped["operator"], mapped["viewer"]
    )


# ---- Settings and claims -------------------------------------------------------------------------------
def test_the_role_map_is_parsed_strictly():
    assert parse_role_map("admin=a|b, viewer=c") == {"a": "admin", "b": "admin", "c": "viewer"}
    for junk in ("boss=a", "admin", "admin=", "admin=a,viewer=a", ""):
        with pytest.raises(ImproperlyConfigured):
            parse_role_map(junk)


def test_the_role_claim_may_be_a_dotted_path_and_the_highest_role_wins(settings):
    settings.OIDC_ROLE_CLAIM = "realm_access.roles"
    settings.OIDC_ROLE_MAP = "admin=portal-admins,operator=portal-operators,viewer=portal-viewers"
    claims = {"realm_access": {"roles": ["portal-viewers", "portal-operators", "offline_access"]}}
    assert oidc.role_from_claims(claims) == "operator"
    assert oidc.role_from_claims({"realm_access": {"roles": "portal-admins"}}) == "admin"
    assert oidc.role_from_claims({"groups": ["portal-admins"]}) is None


def test_a_provider_account_never_takes_over_a_local_account(settings, admin_user):
    settings.OIDC_PROVIDER_NAME = PROVIDER_NAME
    user, role = oidc.oidc_user_sync(
        issuer="https://idp.example.test",
        claims={
            "sub": "abc",
            "preferred_username": admin_user.username,
            "groups": ["portal-viewers"],
            "email": "not an address",  # hostile claims are dropped, never a 500
        },
    )
    assert user.email == ""
    assert user.pk != admin_user.pk and user.username == f"{admin_user.username}-2" and role == "viewer"
    assert not user.has_usable_password()
    again, _ = oidc.oidc_user_sync(issuer="https://idp.example.test", claims={"sub": "abc", "groups": []})
    assert again.pk == user.pk and user_role(again) is None
