"""Simplified Chinese: the switcher changes the language and the portal's own strings are translated."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from django.utils import translation

ROOT = Path(__file__).resolve().parents[3]
PO = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"


def _sources_checker():
    spec = importlib.util.spec_from_file_location("i18n_sources", ROOT / "scripts" / "i18n_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_the_committed_catalog_compiles_and_the_mo_is_committed():
    mo = PO.with_suffix(".mo")
    assert mo.is_file() and mo.stat().st_size > 10_000
    if shutil.which("msgfmt"):  # scripts/i18n --check (in scripts/test) also requires it to be complete
        subprocess.run(["msgfmt", "--check", "-o", "/dev/null", str(PO)], check=True)


def test_the_sources_check_finds_strings_makemessages_cannot_see(tmp_path, monkeypatch):
    checker = _sources_checker()
    monkeypatch.setattr(checker, "ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from django.utils.translation import gettext as _g, gettext_lazy as _lazy, ngettext as _\n"
        "name = 'x'\n"
        "A = _g('hidden')\n"
        "from django.utils.translation import gettext\n"
        "B = gettext(f'{name} formatted')\n"
        "C = gettext(name)\n"
        "D = gettext('fine %(x)s') % {'x': name}\n",
        encoding="utf-8",
    )
    problems = checker.check_file(bad)
    text = "\n".join(problems)
    assert "`gettext as _g`" in text and "`gettext_lazy as _lazy`" in text and "`ngettext as _`" in text
    assert "bad.py:5" in text and "bad.py:6" in text and "bad.py:7" not in text
    assert len(problems) == 5


def test_the_portal_sources_have_no_invisible_strings():
    checker = _sources_checker()
    problems = [
        p
        for path in sorted(ROOT.rglob("*.py"))
        for p in checker.check_file(path)
        if not checker.SKIP_DIRS & set(path.relative_to(ROOT).parts)
    ]
    assert problems == []


@pytest.mark.django_db
def test_django_admin_titles_read_as_chinese(client, admin_user, local_auth):
    client.force_login(admin_user)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    page = client.get("/catalog/datasource/add/").content.decode()
    assert "<title>添加数据源" in page and "增加 数据源" not in page
    failed = client.post("/catalog/datasource/add/", {"name": ""}).content.decode()
    assert "<title>错误： 添加数据源" in failed and "Error:" not in failed


def test_stage_kinds_and_import_plans_show_labels_not_codes():
    from pipelines.stagekinds.registry import registry
    from pipelines.templates_io import ImportPlan

    plan = ImportPlan(dry_run=True)
    plan.add("create", "qc_policy", "strict")
    with translation.override("zh-hans"):
        assert registry.label_of("model_inference") == "模型推理"
        [line] = plan.display_actions()
        assert (line["action_label"], line["object_label"]) == ("创建", "质检策略")
    with translation.override("en"):
        assert registry.label_of("model_inference") == "Model inference"
        assert plan.display_actions()[0]["object_label"] == "QC policy"
    assert registry.label_of("retired_kind") == "retired_kind"
