"""history_default_window: the time range the statistics dashboard opens with."""

import pytest
from django.urls import reverse

from dataflare_portal.core.config import config_set

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("window", ["today", "7d", "30d"])
def test_the_dashboard_opens_with_the_default_range(client, admin_user, window):
    config_set(key="history_default_window", value=window, actor=admin_user)
    page = client.get(reverse("metrics:dashboard"))
    assert page.status_code == 200 and page.context["query"].range == window
    assert page.context["form_values"]["range"] == window
    data = client.get(reverse("metrics:dashboard-data")).json()
    assert data["window"]["range"] == window
    # An explicit range in the URL still wins.
    assert client.get(reverse("metrics:dashboard"), {"range": "7d"}).context["query"].range == "7d"
