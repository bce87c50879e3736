"""The backfill admin page in a real browser (Debian's chromium), in English and Chinese, at 390 and 1366 px:
choose versions, a record range and another template version, preview, see a bad range named, start.
No untranslated string on the Chinese pages (dataflare_portal/core/tests/browser.py says what is data), no
page wider than the window; screenshots go to $BROWSER_SCREENSHOTS, else the test's tmp folder."""

import os
from pathlib import Path

import pytest
from django.utils import timezone

from conftest import chromium_path
from dataflare_portal.core.tests.browser import page_width, untranslated_on_page
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.tests.test_backfill_slices import downstream, upstream, versions_of

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

# What the test created: names on the page that are data, not text to translate (the factories' project,
# datasets and stage keys, the single operator's user name), and "run", the field an error names (as in the API).
DATA = ["Engine tests", "down-out v1", "down", "up-out", "down v1", "down v2", "up", "v1", "operator"]
DATA += ["read", "clean", "publish", "run"]


@pytest.mark.parametrize("lang", ["en", "zh-hans"])
def test_the_backfill_page_takes_a_range_and_a_template_version(
    lang, live_server, browser, doorbell, file_root, monkeypatch, tmp_path
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    up, version, _source = upstream(doorbell, file_root, records=120)
    down = downstream(file_root, up)
    old, _new = versions_of(down)
    shots = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.add_cookies([{"name": "django_language", "value": lang, "url": live_server.url}])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    problems = []

    def look(name: str) -> None:
        if lang != "en":
            problems.extend(f"{name}: {line}" for line in untranslated_on_page(page, DATA))
        for width in (390, 1366):
            page.set_viewport_size({"width": width, "height": 900})
            measured = page_width(page)
            if measured["scroll"] > measured["window"]:
                problems.append(f"{name} at {width}px is {measured['scroll']}px wide")
            page.screenshot(path=str(shots / f"backfill-{name}-{lang}-{width}.png"), full_page=True)
        page.set_viewport_size({"width": 1366, "height": 900})

    page.goto(live_server.url + "/pipelines/pipeline/")
    page.check(f'input.action-select[value="{down.pk}"]')
    page.select_option('select[name="action"]', "run_backfill_action")
    page.click('button[name="index"]')
    page.wait_for_selector("#id_first_record")
    look("form")

    page.fill("#id_versions", str(version.version))
    page.fill("#id_first_record", "11")
    page.fill("#id_last_record", "400")
    page.select_option("#id_template", str(old.pk))
    page.click('input[type="submit"]')
    page.wait_for_selector(".errorlist")
    assert "400" in page.inner_text(".errorlist")
    look("bad-range")

    page.fill("#id_last_record", "40")
    page.click('input[type="submit"]')
    page.wait_for_selector("#df-backfill-preview")
    table = page.inner_text("#df-backfill-preview")
    assert "30" in table and "v1" in table
    look("preview")

    page.click('input[type="submit"].default')
    page.wait_for_selector(".messagelist")
    doorbell.drain()
    run = TaskRun.objects.get(pipeline=down)
    assert run.status == RunStatus.SUCCEEDED and run.records_in == 30 and run.template_id == old.pk
    assert run.trigger["records"] == {"first": 11, "last": 40}

    # The run's page shows when its workspace was pruned; a re-run of it is refused saying so.
    TaskRun.objects.filter(pk=run.pk).update(workspace_pruned_at=timezone.now())
    page.goto(f"{live_server.url}/tasks/taskrun/{run.pk}/change/")
    page.wait_for_selector(".field-workspace_pruned_at")
    look("run-page")
    page.goto(live_server.url + "/tasks/taskrun/")
    page.check(f'input.action-select[value="{run.pk}"]')
    page.select_option('select[name="action"]', "run_rerun_action")
    page.click('button[name="index"]')
    page.fill("#id_stage", "publish")
    page.click('input[type="submit"]')
    page.wait_for_selector(".messagelist .error")
    assert ("was pruned on" if lang == "en" else "被清理") in page.inner_text(".messagelist .error")
    look("rerun-refused")
    context.close()
    assert not errors, errors
    assert not problems, "\n".join(problems)
