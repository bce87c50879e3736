"""The operator's main path in a real browser (Debian's chromium), mostly by keyboard, typing no JSON, in
English and in Chinese: create a data source and a pipeline through the forms, run it, review its lot
from the run page, publish, preview and download the version. No console error, no request beyond the
portal; in Chinese, no untranslated string on any page the path visits (dataflare_portal/core/tests/
browser.py says what counts as data); and no page is wider than the window at 390 px and 1366 px
(measured with scrollWidth; screenshots go to $BROWSER_SCREENSHOTS, else the test's tmp folder).

Batches execute in this process through the in-process doorbell (tasks/tests/conftest.py), drained
while the browser shows a page that does not poll, so the live server and the test never share the
database connection at the same moment on the embedded SQLite default.
"""

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import override

from catalog.models import Dataset, DataSource, Project
from conftest import chromium_path
from dataflare_portal.core.tests.browser import page_width, untranslated_on_page
from pipelines.models import Pipeline
from pipelines.stagekinds import registry
from pipelines.tests.factories import QCPolicyFactory
from tasks.choices import LotDecision, RunStatus
from tasks.models import TaskRun
from tasks.services import reap
from tasks.tests.factories import write_jsonl

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

RECORDS = [{"id": i, "text": f"record number {i} with enough text" if i % 5 else "short"} for i in range(40)]
# What this test enters: names of the things it creates, stage keys (chosen unlike any kind's code, so
# a page that shows a raw kind code instead of its label is caught), the field it names. On a Chinese
# page these are data; every other English word is an untranslated string.
PROJECT, SOURCE, POLICY, PIPELINE = "Console path", "console-files", "console-review", "console pipeline"
KEYS = ["ingest", "min-length", "sample", "release"]
DATA = [PROJECT, "console-path", SOURCE, "console-in", "console-out", "in.jsonl", POLICY, PIPELINE, *KEYS, "text"]
# The pages Done-when names, measured at both widths (the pipeline page must fit a laptop as well).
WIDTHS = (390, 1366)


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
    page.wait_for_selector(".select2-search__field:focus")  # a selector: the page's CSP forbids eval
    page.keyboard.type(text)
    page.wait_for_selector(f".select2-results__option--highlighted:has-text('{text}')", timeout=10000)
    page.keyboard.press("Enter")


class Console:
    """The browser page with the checks every visit runs: untranslated strings (zh) and page width."""

    def __init__(self, page, lang, shots: Path):
        self.page, self.lang, self.shots = page, lang, shots
        self.untranslated: list[str] = []
        self.widths: list[tuple] = []

    def check(self, name: str):
        """Collect what is untranslated on the page as it is now (Chinese only)."""
        if self.lang != "en":
            self.untranslated += [f"{name}: {line}" for line in untranslated_on_page(self.page, DATA)]

    def measure(self, name: str, width: int):
        """The page's scroll width at this window width, and a full-page screenshot."""
        self.page.set_viewport_size({"width": width, "height": 900})
        self.page.wait_for_load_state("networkidle")
        # Honest numbers: a root that hides horizontal overflow would clip content and still report it fits.
        hidden = self.page.evaluate(
            "() => [getComputedStyle(document.documentElement).overflowX, getComputedStyle(document.body).overflowX]"
        )
        assert "hidden" not in hidden and "clip" not in hidden, f"{name} hides horizontal overflow: {hidden}"
        measured = page_width(self.page)
        self.widths.append((name, self.lang, width, measured["scroll"], measured["window"]))
        self.page.screenshot(path=str(self.shots / f"{name}-{self.lang}-{width}.png"), full_page=True)
        self.check(f"{name}@{width}")


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


@pytest.mark.parametrize("lang", ["en", "zh-hans"])
def test_the_operator_main_path_by_keyboard(
    lang, live_server, browser, doorbell, file_root, monkeypatch, tmp_path, product_kinds_only
):
    # Playwright's sync API keeps an event loop on this thread; the ORM calls here are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    project = Project.objects.create(name=PROJECT, slug="console-path")
    policy = QCPolicyFactory(name=POLICY, sample_size=2, acceptance_number=0, require_review=True)
    write_jsonl(file_root / "console" / "in.jsonl", RECORDS)
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    context.add_cookies([{"name": "django_language", "value": lang, "url": live_server.url}])
    page = context.new_page()
    guard = Guard(page, live_server.url)
    shots = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    console = Console(page, lang, shots)
    url = live_server.url

    # 1. A data source through its form: the file kind shows its allowed roots and no password.
    page.goto(url + "/catalog/datasource/add/")
    autocomplete(page, "id_project", PROJECT)
    type_into(page, "#id_name", SOURCE)
    page.focus("#id_kind")
    page.select_option("#id_kind", "file")
    root = page.locator('[data-target="id_config"] [data-path="$.root"]')
    root.wait_for()
    assert str(file_root.resolve()) in page.locator('[data-target="id_config"] .df-sf-kindhelp').inner_text()
    assert page.locator("fieldset.df-credentials").is_hidden()
    type_into(page, '[data-target="id_config"] [data-path="$.root"]', "console")
    console.check("data source form")
    press(page, 'input[name="_continue"]')
    page.wait_for_selector("#df-test-connection")
    source = DataSource.objects.get(name=SOURCE)
    assert source.config == {"root": "console"} and source.secret_ciphertext == ""
    press(page, "#df-test-connection")
    page.wait_for_selector(".messagelist .success")
    console.check("data source page")
    # Datasets are the catalog's other form; this path needs two, made here.
    inp = Dataset.objects.create(project=project, source=source, name="console-in", format="jsonl", location="in.jsonl")
    Dataset.objects.create(project=project, source=source, name="console-out", format="jsonl", location="out")

    # 2. A pipeline through its form: kinds from a list, settings from each kind's schema.
    page.goto(url + "/pipelines/pipeline/add/")
    autocomplete(page, "id_project", PROJECT)
    type_into(page, "#id_name", PIPELINE)
    page.select_option("#id_status", "active")
    autocomplete(page, "id_input_dataset", "console-in")
    autocomplete(page, "id_output_dataset", "console-out")
    autocomplete(page, "id_qc_policy", POLICY)
    add_stage(page, 0, KEYS[0], "read")
    add_stage(page, 1, KEYS[1], "filter")
    form = '[data-target="id_stages-1-config"]'
    page.focus(f"{form} .df-sf-adder select")
    page.select_option(f"{form} .df-sf-adder select", "length")
    press(page, f"{form} .df-sf-adder button")
    type_into(page, f'{form} [data-path="$.rules[0].field"]', "text")
    type_into(page, f'{form} [data-path="$.rules[0].min"]', "8")
    add_stage(page, 2, KEYS[2], "qc")
    add_stage(page, 3, KEYS[3], "publish")
    console.check("pipeline form")
    press(page, 'input[name="_continue"]')
    page.wait_for_selector("ol.df-flow")
    console.check("pipeline page")
    pipeline = Pipeline.objects.get(name=PIPELINE)
    stages = list(pipeline.stages.order_by("position").values_list("key", "kind", "config"))
    assert stages == [
        (KEYS[0], "read", {}),
        (
            KEYS[1],
            "filter",
            {"text_field": "text", "on_fail": "drop", "rules": [{"type": "length", "field": "text", "min": 8}]},
        ),
        (KEYS[2], "qc", {"text_field": "text"}),
        (KEYS[3], "publish", {}),
    ]
    assert pipeline.input_dataset == inp and pipeline.qc_policy == policy
    with override(lang):
        labels = [str(registry.get(kind).label) for kind in ("read", "filter", "qc", "publish")]
    assert [t.strip() for t in page.locator("ol.df-flow .df-flow-kind").all_inner_texts()] == labels

    # 3. Run it (the change list's action), and let the batches execute.
    page.goto(url + "/pipelines/pipeline/")
    page.check(f'input[name="_selected_action"][value="{pipeline.pk}"]')
    page.select_option('select[name="action"]', "run_pipeline_action")
    press(page, 'button[name="index"]')
    follow = ".messagelist .success a[href*='/runs/']"
    page.wait_for_selector(follow)
    console.check("pipeline list")
    run = TaskRun.objects.get(pipeline=pipeline)
    for _ in range(50):
        if not doorbell.drain():
            break
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING, run.status_reason

    # 4. The run page says why it waits and leads to that lot's review.
    press(page, follow)
    page.wait_for_selector("#df-run-why")
    lot = run.stage_runs.get(kind="qc").qc_lot
    assert str(lot.pk) in page.inner_text("#df-run-why")
    assert page.get_attribute("#df-run-unblock", "href").endswith(f"?lot={lot.pk}")
    assert "df-badge-warn" in page.get_attribute("#df-run-status", "class")
    console.check("run page, waiting")
    press(page, "#df-run-unblock")
    page.wait_for_selector("#df-review-scope")
    console.check("review page")
    for _ in range(lot.items.count()):
        page.wait_for_selector("#df-accept")
        # Wait for the decision's own page load: a bare wait_for_load_state() may return for the page
        # being left, and the next "a" would decide the same record again (seen under load).
        with page.expect_navigation():
            page.keyboard.press("a")
    page.wait_for_selector("#df-review-done")
    console.check("review done")
    lot.refresh_from_db()
    assert lot.decision == "accepted"

    # 5. Publish (the parked publish step goes once the lot is accepted), then see the version.
    reap(now=timezone.now() + timedelta(seconds=1))
    for _ in range(20):
        if not doorbell.drain():
            break
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    press(page, "#df-back-to-run")
    page.wait_for_selector("#df-run-published")
    console.check("run page, succeeded")
    press(page, "#df-run-published")
    page.wait_for_selector("#df-lineage")
    console.check("version page")
    expected = [r for r in RECORDS if len(r["text"]) >= 8]
    assert page.inner_text("#df-version-records") == str(len(expected))
    assert run.pipeline.name in page.inner_text("#df-lineage") and "console-in" in page.inner_text("#df-lineage")
    with override(lang):
        assert str(LotDecision.ACCEPTED.label) in page.inner_text("#df-lineage")
    assert expected[0]["text"] in page.inner_text("#df-version-preview")
    with page.expect_download() as download:
        press(page, "#df-version-download")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r["id"] for r in expected]

    # 6. Nothing is wider than the window, on a phone and on a laptop: the four pages Done-when names, the
    # pages of this leftovers (settings' choice labels, the stage runs' kind filter), the version
    # and the lot's review page.
    pages = {
        "overview": "/",
        "dashboard": "/dashboard/",
        "run": f"/runs/{run.pk}/",
        "pipeline": f"/pipelines/pipeline/{pipeline.pk}/change/",
        "settings": "/system/config/",
        "stage-runs": "/tasks/stagerun/",
        "version": reverse("tasks:version-detail", args=[run.output_version_id]),
        "review": reverse("admin:tasks_reviewitem_review") + f"?lot={lot.pk}",
    }
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages.items():
            page.goto(url + path)
            console.measure(name, width)
    too_wide = [w for w in console.widths if w[3] > w[4]]
    assert not too_wide, f"(page, language, width, scrollWidth, innerWidth): {too_wide}"
    assert console.untranslated == [], "untranslated on the zh pages:\n" + "\n".join(console.untranslated)
    assert guard.outside == [] and guard.errors == []
    print(f"screenshots in {shots}:", *console.widths, sep="\n  ")
