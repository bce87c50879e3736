"""Every registered admin model's changelist, search, add and change pages render for the admin persona.

The registry is read at run time, so models other helpers register later are covered too.
"""

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.urls import reverse


def admin_urls(model, name: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{name}", args=args)


@pytest.fixture
def seeded(db, file_root):
    call_command("seed_demo", days=2, verbosity=0)


@pytest.mark.django_db
def test_every_admin_page_renders_for_the_admin(client, admin_user, seeded, local_auth):
    client.force_login(admin_user)
    problems = []
    for model, model_admin in sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label):
        label = model._meta.label
        pages = [("changelist", admin_urls(model, "changelist"))]
        if model_admin.search_fields:
            pages.append(("search", admin_urls(model, "changelist") + "?q=demo"))
        if model_admin.has_add_permission(_request(admin_user)):
            pages.append(("add", admin_urls(model, "add")))
        obj = model._default_manager.order_by("pk").first()
        if obj is not None:
            pages.append(("change", admin_urls(model, "change", obj.pk)))
        for page, url in pages:
            response = client.get(url)
            if response.status_code != 200:
                problems.append(f"{label} {page} {url}: {response.status_code}")
    assert not problems, "\n".join(problems)
    assert len(admin.site._registry) >= 2


@pytest.mark.django_db
def test_the_audit_log_is_read_only(client, admin_user, local_auth):
    from dataflare_portal.core.models import AuditLogEntry
    from dataflare_portal.core.services import audit_record

    entry = audit_record(actor=admin_user, action="config", object_type="core.systemconfig", object_id="k")
    client.force_login(admin_user)
    assert client.get(reverse("admin:core_auditlogentry_add")).status_code == 403
    page = client.get(reverse("admin:core_auditlogentry_change", args=[entry.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.post(reverse("admin:core_auditlogentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    assert AuditLogEntry.objects.filter(pk=entry.pk).exists()


@pytest.mark.django_db
def test_a_system_setting_saved_in_the_admin_is_validated_audited_and_applied(client, admin_user, local_auth):
    from dataflare_portal.core.config import config_get
    from dataflare_portal.core.models import AuditLogEntry, SystemConfig

    client.force_login(admin_user)
    add = reverse("admin:core_systemconfig_add")
    unknown = client.post(add, {"key": "no_such_setting", "value": "1"})
    assert unknown.status_code == 200 and "no_such_setting" in unknown.content.decode()
    too_small = client.post(add, {"key": "dashboard_refresh_seconds", "value": "1"})
    assert too_small.status_code == 200 and not SystemConfig.objects.exists()
    response = client.post(add, {"key": "dashboard_refresh_seconds", "value": "15"})
    assert response.status_code == 302, response.content[:500]
    row = SystemConfig.objects.get(key="dashboard_refresh_seconds")
    assert row.value == 15 and row.updated_by == admin_user
    assert config_get("dashboard_refresh_seconds") == 15
    assert AuditLogEntry.objects.filter(object_type="core.systemconfig", actor=admin_user).count() == 1
    delete = client.post(reverse("admin:core_systemconfig_delete", args=[row.pk]), {"post": "yes"})
    assert delete.status_code == 302
    assert not SystemConfig.objects.exists() and config_get("dashboard_refresh_seconds") == 60


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user
    return request
