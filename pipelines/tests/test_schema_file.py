"""The shipped JSON Schema file is the one the code validates with."""

import json
from pathlib import Path

from django.conf import settings

from pipelines.templates_io import TEMPLATE_JSON_SCHEMA


def test_docs_schema_file_matches_the_code():
    shipped = json.loads((Path(settings.BASE_DIR) / "docs" / "pipeline-template.schema.json").read_text())
    assert shipped == json.loads(json.dumps(TEMPLATE_JSON_SCHEMA))
