"""Words, not codes, on the console pages (issue 13): choice labels on the settings page, kind labels in the
stage-run filter, the yes/no icons' text, and the language switcher on every portal page."""

import re

import pytest
from django.urls import reverse

from pipelines.tests.factories import PipelineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def zh(client):
    client.cookies["django_language"] = "zh-hans"
    return client


def test_the_settings_page_shows_a_choice_by_its_label(zh):
    html = zh.get(reverse("core:config")).content.decode()
    row = re.search(r'<tr id="setting-history_default_window".*?</tr>', html, re.S).group(0)
    assert re.search(r'class="df-config-value"[^>]*>今天<', row)
    assert '<option value="7d">最近 7 天</option>' in row and '<option value="30d">最近 30 天</option>' in row
    auth = re.search(r'<tr id="setting-auth_mode".*?</tr>', html, re.S).group(0)
    assert re.search(r'class="df-config-value"[^>]*>单操作员<', auth)


def test_the_stage_run_kind_filter_lists_kind_labels(zh):
    html = zh.get("/tasks/stagerun/").content.decode()
    filters = html[html.index('id="changelist-filter"') :]
    assert '?kind=filter">过滤</a>' in filters and '?kind=model_inference">模型推理</a>' in filters
    assert ">filter</a>" not in filters


def test_yes_no_icons_speak_the_reader_language(zh):
    pipeline = PipelineFactory()
    html = zh.get(f"/pipelines/pipeline/{pipeline.pk}/change/").content.decode()
    assert re.search(r'<img src="[^"]*icon-no\.svg" alt="否">', html)
    assert 'alt="False"' not in html and 'alt="True"' not in html


@pytest.mark.parametrize("url", ["/", "/dashboard/", "/system/config/", "/workers/", "/alerts/"])
def test_every_portal_page_has_the_language_switcher(zh, url):
    html = zh.get(url).content.decode()
    assert 'id="user-tools"' in html and 'id="df-lang-select"' in html
    # The built-in operator is called by its role, in the reader's language.
    assert "<strong>操作员</strong>" in html
