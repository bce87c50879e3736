"""A wasm stage's settings in a real browser (Debian's chromium), English and Chinese, 1366 px and 390 px: the
capabilities are offered by name with their labels, the granted ones ticked; the record search is a switch;
no untranslated string on the Chinese page. Screenshots go to $BROWSER_SCREENSHOTS, else the test's tmp folder.
"""

import os
from pathlib import Path

import pytest

from conftest import chromium_path
from dataflare_portal.core.tests.browser import page_width, untranslated_on_page
from tasks.tests.factories import make_pipeline, make_records
from wasmstages.services import wasm_module_upload

from . import modules

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

DATA = ["caps", "caps@1", "wasm", "read", "publish", "grant", "grant-in", "grant-out", "Engine tests", "engine-tests"]
# Codes an operator writes in the stage's JSON config, shown beside their translated meaning.
DATA += ["clock", "env", "log", "random", "latest"]
# Stage kinds that other test modules of the same session register (tasks/tests/kinds_for_tests.py): test
# fixtures, never shown to an operator, so not in the catalogue.
DATA += ["Test: slow", "Test: fail", "Test: wait"]


@pytest.mark.parametrize("lang", ["en", "zh-hans"])
@pytest.mark.parametrize("width", [1366, 390])
def test_the_capabilities_of_a_wasm_stage_in_a_browser(
    lang, width, live_server, browser, file_root, tmp_path, monkeypatch
):
    # Playwright's loop shares this thread; only for this test (a leaked variable fails `check --deploy`).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    wasm_module_upload(name="caps", content=modules.binary(modules.WASI_ALL), actor=None)
    stages = [("wasm", "wasm", {"module": "caps", "capabilities": ["clock", "log", "random"]})]
    pipeline = make_pipeline(file_root, records=make_records(5), stages=stages, name="grant")
    shots = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.add_cookies([{"name": "django_language", "value": lang, "url": live_server.url}])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/pipelines/pipeline/{pipeline.pk}/change/")
    stage = page.locator(".inline-related", has_text="wasm").first
    stage.scroll_into_view_if_needed()
    labels = {
        "en": ["clock: read the wall and monotonic clocks", "random: read random bytes", "Name the record that fails"],
        "zh-hans": ["clock：读取墙钟和单调时钟", "random：读取随机字节", "指出导致失败的记录"],
    }[lang]
    # The settings form is drawn by the page's script: wait for it (a busy machine takes more than a moment).
    stage.get_by_text(labels[0]).first.wait_for(timeout=15000)
    text = stage.inner_text()
    for label in labels:
        assert label in text, text[:3000]
    stage.screenshot(path=str(shots / f"wasm-stage-{lang}-{width}.png"))
    page.screenshot(path=str(shots / f"wasm-pipeline-{lang}-{width}.png"), full_page=True)
    measure = page_width(page)
    assert measure["scroll"] <= measure["window"] + 1, measure
    if lang != "en":
        untranslated = untranslated_on_page(page, DATA)
        assert untranslated == [], "untranslated on the zh page:\n" + "\n".join(untranslated)
    assert errors == []
    context.close()
