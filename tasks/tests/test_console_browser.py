"""The operator's main path in a real browser (Debian's chromium), mostly by keyboard, typing no JSON:
create a data source and a pipeline through the forms, run it, review its lot from the run page,
publish, preview and download the version. No console error, no request beyond the portal; and no
page of the console is wider than the window at 390 px and 1366 px.

Batches execute in this process through the in-process doorbell (tasks/tests/conftest.py), drained
while the browser shows a page that does not poll, so the live server and the test never share the
database connection at the same moment on the embedded SQLite default.
"""

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from catalog.models import Dataset, DataSource, Project
from conftest import chromium_path
from pipelines.models import Pipeline
from pipelines.tests.factories import QCPolicyFactory
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.services import reap
from tasks.tests.factories import write_jsonl

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

RECORDS = [{"id": i, "text": f"record number {i} with enough text" if i % 5 else "short"} for i in range(40)]


class Guard:
    """Aborts (and remembers) any request beyond the live server; collects console and page errors."""

    def __init__(self, page, base_url):
        self.outside, self.errors = [], []
        self.base = base_url

        def route(route):
            if route.request.url.startswith(self.base) or route.request.url.startswith("data:"):
                route.continue_()
            else:
                self.outside.append(route.request.url)
                route.abort()

        def console(msg):
            # The favicon is another change's (issue 13 item 9); every other console error counts.
            if msg.type == "error" and not (msg.location or {}).get("url", "").endswith("/favicon.ico"):
                self.errors.append(f"{msg.text} @ {(msg.location or {}).get('url')}")

        page.route("**/*", route)
        page.on("console", console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))


def press(page, selector):
    """Focus an element and press Enter on it: how a keyboard user follows a link or a button."""
    page.focus(selector)
    page.keyboard.press("Enter")


def autocomplete(page, field_id, text):
    """Choose in a Django admin autocomplete box by keyboard: open, type, Enter."""
    page.focus(f"#{field_id} + .select2 .select2-selection")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.activeElement && document.activeElement.classList.contains('select2-search__field')"
    )
    page.keyboard.type(text)
    page.wait_for_selector(f".select2-results__option--highlighted:has-text('{text}')", timeout=10000)
    page.keyboard.press("Enter")


def type_into(page, selector, text):
    page.focus(selector)
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def add_stage(page, index, key, kind):
    press(page, "#stages-group .add-row a")
    page.wait_for_selector(f"#id_stages-{index}-key")
    type_into(page, f"#id_stages-{index}-position", str(index))
    type_into(page, f"#id_stages-{index}-key", key)
    page.focus(f"#id_stages-{index}-kind")
    page.select_option(f"#id_stages-{index}-kind", kind)
    # The settings form of the kind appears in place of the (hidden) raw JSON box.
    page.wait_for_selector(f'[data-target="id_stages-{index}-config"] .df-sf-object')


def test_the_operator_main_path_by_keyboard(live_server, browser, doorbell, file_root, monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the ORM calls here are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    project = Project.objects.create(name="Console path", slug="console-path")
    policy = QCPolicyFactory(name="console-review", sample_size=2, acceptance_number=0, require_review=True)
    write_jsonl(file_root / "console" / "in.jsonl", RECORDS)
    page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    guard = Guard(page, live_server.url)
    url = live_server.url

    # 1. A data source through its form: the file kind shows its allowed roots and no password.
    page.goto(url + "/catalog/datasource/add/")
    autocomplete(page, "id_project", "Console path")
    type_into(page, "#id_name", "console-files")
    page.focus("#id_kind")
    page.select_option("#id_kind", "file")
    root = page.locator('[data-target="id_config"] [data-path="$.root"]')
    root.wait_for()
    assert str(file_root.resolve()) in page.locator('[data-target="id_config"] .df-sf-kindhelp').inner_text()
    assert page.locator("fieldset.df-credentials").is_hidden()
    type_into(page, '[data-target="id_config"] [data-path="$.root"]', "console")
    press(page, 'input[name="_continue"]')
    page.wait_for_selector("text=Test connection")
    source = DataSource.objects.get(name="console-files")
    assert source.config == {"root": "console"} and source.secret_ciphertext == ""
    press(page, "button:has-text('Test connection')")
    page.wait_for_selector(".messagelist .success")
    # Datasets are the catalog's other form; this path needs two, made here.
    inp = Dataset.objects.create(project=project, source=source, name="console-in", format="jsonl", location="in.jsonl")
    Dataset.objects.create(project=project, source=source, name="console-out", format="jsonl", location="out")

    # 2. A pipeline through its form: kinds from a list, settings from each kind's schema.
    page.goto(url + "/pipelines/pipeline/add/")
    autocomplete(page, "id_project", "Console path")
    type_into(page, "#id_name", "console pipeline")
    page.select_option("#id_status", "active")
    autocomplete(page, "id_input_dataset", "console-in")
    autocomplete(page, "id_output_dataset", "console-out")
    autocomplete(page, "id_qc_policy", "console-review")
    add_stage(page, 0, "read", "read")
    add_stage(page, 1, "filter", "filter")
    form = '[data-target="id_stages-1-config"]'
    page.focus(f"{form} .df-sf-adder select")
    page.select_option(f"{form} .df-sf-adder select", "length")
    press(page, f"{form} .df-sf-adder button")
    type_into(page, f'{form} [data-path="$.rules[0].field"]', "text")
    type_into(page, f'{form} [data-path="$.rules[0].min"]', "8")
    add_stage(page, 2, "qc", "qc")
    add_stage(page, 3, "publish", "publish")
    press(page, 'input[name="_continue"]')
    page.wait_for_selector("ol.df-flow")
    pipeline = Pipeline.objects.get(name="console pipeline")
    stages = list(pipeline.stages.order_by("position").values_list("key", "kind", "config"))
    assert stages == [
        ("read", "read", {}),
        (
            "filter",
            "filter",
            {"text_field": "text", "on_fail": "drop", "rules": [{"type": "length", "field": "text", "min": 8}]},
        ),
        ("qc", "qc", {"text_field": "text"}),
        ("publish", "publish", {}),
    ]
    assert pipeline.input_dataset == inp and pipeline.qc_policy == policy
    assert [t.strip() for t in page.locator("ol.df-flow .df-flow-kind").all_inner_texts()] == [
        "Read input dataset",
        "Filter",
        "Quality check",
        "Publish dataset version",
    ]

    # 3. Run it (the change list's action), and let the batches execute.
    page.goto(url + "/pipelines/pipeline/")
    page.check(f'input[name="_selected_action"][value="{pipeline.pk}"]')
    page.select_option('select[name="action"]', "run_pipeline_action")
    press(page, 'button[name="index"]')
    page.wait_for_selector("text=follow it")
    run = TaskRun.objects.get(pipeline=pipeline)
    for _ in range(50):
        if not doorbell.drain():
            break
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING, run.status_reason

    # 4. The run page says why it waits and leads to that lot's review.
    press(page, "text=follow it")
    page.wait_for_selector("#df-run-why")
    lot = run.stage_runs.get(kind="qc").qc_lot
    assert f"QC lot {lot.pk}" in page.inner_text("#df-run-why")
    assert "df-badge-warn" in page.get_attribute("#df-run-status", "class")
    press(page, "#df-run-unblock")
    page.wait_for_selector("#df-review-scope")
    for _ in range(lot.items.count()):
        page.wait_for_selector("#df-accept")
        page.keyboard.press("a")
        page.wait_for_load_state()
    page.wait_for_selector("#df-review-done")
    lot.refresh_from_db()
    assert lot.decision == "accepted"

    # 5. Publish (the parked publish step goes once the lot is accepted), then see the version.
    reap(now=timezone.now() + timedelta(seconds=1))
    for _ in range(20):
        if not doorbell.drain():
            break
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    press(page, "text=Back to the run")
    page.wait_for_selector("#df-run-published")
    press(page, "#df-run-published")
    page.wait_for_selector("#df-lineage")
    expected = [r for r in RECORDS if len(r["text"]) >= 8]
    assert page.inner_text("#df-version-records") == str(len(expected))
    assert run.pipeline.name in page.inner_text("#df-lineage")
    assert "Accepted" in page.inner_text("#df-lineage")
    assert expected[0]["text"] in page.inner_text("#df-version-preview")
    with page.expect_download() as download:
        press(page, "#df-version-download")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r["id"] for r in expected]

    # 6. Nothing is wider than the window, on a phone and on a laptop.
    for width in (390, 1366):
        page.set_viewport_size({"width": width, "height": 900})
        for path in ("/", "/dashboard/", f"/runs/{run.pk}/", f"/pipelines/pipeline/{pipeline.pk}/change/"):
            page.goto(url + path)
            page.wait_for_load_state("networkidle")
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, f"{path} is {scroll} px wide at {width} px"
    assert guard.outside == [] and guard.errors == []
