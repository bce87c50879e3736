"""Simplified Chinese: the switcher changes the language and the portal's own strings are translated."""

import sys
from pathlib import Path

import pytest
from django.utils import translation

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "locale"))

from fill_translations import PLACEHOLDER, PO, parse  # noqa: E402


@pytest.mark.django_db
def test_switching_to_chinese_translates_the_portal(client):
    english = client.get("/").content.decode()
    assert "Operations overview" in english and "运营概览" not in english
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    chinese = client.get("/").content.decode()
    assert '<html lang="zh-hans"' in chinese
    for text in ("运营概览", "仪表盘", "复核队列", "告警收件箱", "流水线"):
        assert text in chinese, text
    assert "Operations overview" not in chinese


@pytest.mark.django_db
def test_admin_pages_and_model_names_are_translated(client):
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    page = client.get("/core/auditlogentry/").content.decode()
    assert "审计日志" in page


def test_lazy_model_labels_follow_the_active_language():
    from pipelines.models import Pipeline

    with translation.override("zh-hans"):
        assert str(Pipeline._meta.verbose_name) == "流水线"
    with translation.override("en"):
        assert str(Pipeline._meta.verbose_name) == "pipeline"


def test_the_committed_catalog_is_complete_and_compiled():
    entries = [e for e in parse(PO.read_text(encoding="utf-8")) if e.msgid and not e.obsolete]
    assert len(entries) > 500
    untranslated = [e.msgid for e in entries if not e.translated()]
    assert not untranslated, f"run scripts/i18n; untranslated: {untranslated[:10]}"
    for entry in entries:
        text = next(iter(entry.msgstr.values()))
        if entry.msgid_plural is None:
            assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(entry.msgid)), entry.msgid
    mo = PO.with_suffix(".mo")
    assert mo.is_file() and mo.stat().st_size > 10_000


SAMPLE_PO = r"""msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

#: a.py:1
#| msgid "Choose a project."
#, fuzzy, python-format
msgid "Choose %(what)s."
msgstr "请选择项目。"

#: b.py:2
msgctxt "menu"
msgid "Run"
msgstr ""

#: c.py:3
#, python-format
msgid "%(n)d alert is firing."
msgid_plural "%(n)d alerts are firing."
msgstr[0] ""
msgstr[1] ""

#: d.py:4
msgid ""
"Two\n"
"lines \"quoted\""
msgstr ""

#~ msgid "Old"
#~ msgstr "旧"
"""


def test_the_po_writer_fills_and_keeps_the_catalog_valid(tmp_path):
    import shutil
    import subprocess

    from fill_translations import fill, render

    entries = parse(SAMPLE_PO)
    missing, mismatched = fill(
        entries,
        {
            "Choose %(what)s.": "请选择%(what)s。",
            "Run": "运行",
            "%(n)d alert is firing.": "%(n)d 条告警正在触发。",
            'Two\nlines "quoted"': '两行\n"引号"',
            "Broken %(x)s": "坏的",
        },
    )
    assert (missing, mismatched) == ([], [])
    text = render(entries)
    again = {e.key: e for e in parse(text) if e.msgid and not e.obsolete}
    assert (
        again["Choose %(what)s."].msgstr == {-1: "请选择%(what)s。"} and "fuzzy" not in again["Choose %(what)s."].flags
    )
    assert again["menu\x04Run"].msgstr == {-1: "运行"}
    assert again["%(n)d alert is firing."].msgstr == {0: "%(n)d 条告警正在触发。"}
    assert again['Two\nlines "quoted"'].msgstr == {-1: '两行\n"引号"'}
    assert '#~ msgid "Old"' in text and "#|" not in text
    if shutil.which("msgfmt"):
        po = tmp_path / "t.po"
        po.write_text(text, encoding="utf-8")
        subprocess.run(["msgfmt", "--check", "-o", str(tmp_path / "t.mo"), str(po)], check=True)


def test_a_translation_that_drops_a_placeholder_is_refused():
    from fill_translations import fill

    entries = parse('msgid ""\nmsgstr ""\n\n#, python-format\nmsgid "Run %(id)s failed"\nmsgstr ""\n')
    missing, mismatched = fill(entries, {"Run %(id)s failed": "运行失败"})
    assert mismatched == ["Run %(id)s failed"] and missing == ["Run %(id)s failed"]
