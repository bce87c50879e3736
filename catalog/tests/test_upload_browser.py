"""The upload page in a real browser (Debian's chromium), in English and Chinese: from a files source's page
to the upload form, a file chosen and sent, the new dataset shown with its record count and sha256; a
traversal name refused on the form with the field's error. In Chinese, no untranslated string on the pages
(dataflare_portal/core/tests/browser.py); screenshots go to $BROWSER_SCREENSHOTS, else the test's tmp folder.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest

from catalog import services
from catalog.models import Dataset, Project
from conftest import chromium_path
from dataflare_portal.core.tests.browser import untranslated_on_page

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

SOURCE, NAME, BAD = "landing-zone", "orders-upload", "orders-evil"
# The preview on the dataset page shows the uploaded records: their fields and values are data too.
DATA = [SOURCE, NAME, BAD, "upload-project", "../orders.jsonl", "Upload project", "id", "text"]
DATA += [f"row {i}" for i in range(20)]


@pytest.mark.parametrize("lang", ["en", "zh-hans"])
def test_the_upload_page_in_a_browser(lang, live_server, browser, file_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    (file_root / "landing").mkdir(parents=True, exist_ok=True)
    project = Project.objects.create(name="Upload project", slug="upload-project")
    source = services.datasource_create(
        actor=None, project=project, name=SOURCE, kind="file", config={"root": str(file_root / "landing" / lang)}
    )
    data = "".join(json.dumps({"id": i, "text": f"row {i}"}) + "\n" for i in range(250)).encode()
    upload = tmp_path / "orders.jsonl"
    upload.write_bytes(data)
    shots = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.add_cookies([{"name": "django_language", "value": lang, "url": live_server.url}])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    untranslated = []

    def check(name):
        page.screenshot(path=str(shots / f"upload-{name}-{lang}.png"), full_page=True)
        if lang != "en":
            untranslated.extend(f"{name}: {line}" for line in untranslated_on_page(page, DATA))

    page.goto(f"{live_server.url}/catalog/datasource/{source.pk}/change/")
    page.focus("#df-upload-link")
    page.keyboard.press("Enter")
    page.wait_for_selector("#df-upload-form")
    check("form")

    # A traversal name: refused on the form, naming the path; nothing written, no dataset.
    page.fill("#id_name", BAD)
    page.fill("#id_location", "../orders.jsonl")
    page.set_input_files("#id_file", str(upload))
    page.click("#df-upload-submit")
    page.wait_for_selector("#df-upload-error")
    assert "../orders.jsonl" in page.inner_text("#df-upload-form .errorlist")
    check("refused")
    assert not Dataset.objects.filter(name=BAD).exists()

    page.fill("#id_name", NAME)
    page.fill("#id_location", "")
    page.set_input_files("#id_file", str(upload))
    page.click("#df-upload-submit")
    page.wait_for_selector("#df-upload-result")
    assert page.inner_text("#df-upload-sha256") == hashlib.sha256(data).hexdigest()
    assert page.inner_text("#df-upload-records") == "250"
    check("result")
    dataset = Dataset.objects.get(name=NAME)
    assert dataset.row_count == 250 and dataset.location == "orders.jsonl"
    page.click("#df-upload-dataset")
    page.wait_for_selector(".df-preview")
    check("dataset")
    assert errors == []
    assert untranslated == [], "untranslated on the zh pages:\n" + "\n".join(untranslated)
    context.close()
