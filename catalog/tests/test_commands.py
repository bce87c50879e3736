"""Management commands call the same services as the admin and the API."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from .factories import DatasetFactory, FileSourceFactory

pytestmark = pytest.mark.django_db


def test_test_datasource_exits_non_zero_on_failure(file_root):
    good = FileSourceFactory()
    out = StringIO()
    call_command("test_datasource", good.name, stdout=out)
    assert "readable" in out.getvalue()
    bad = FileSourceFactory(config={"root": "gone"})
    with pytest.raises(SystemExit) as exc:
        call_command("test_datasource", str(good.pk), str(bad.pk), stdout=StringIO())
    assert exc.value.code == 1
    bad.refresh_from_db()
    assert bad.status == "error"


def test_profile_dataset_prints_json(file_root):
    (file_root / "c.csv").write_text("a,b\n1,x\n2,y\n")
    dataset = DatasetFactory(format="csv", location="c.csv")
    out = StringIO()
    call_command("profile_dataset", dataset.name, "--json", stdout=out)
    body = json.loads(out.getvalue())
    assert body["row_count"] == 2 and body["schema"][0] == {"name": "a", "type": "int", "nullable": False}
    with pytest.raises(CommandError):
        call_command("profile_dataset", "nope", stdout=StringIO())
