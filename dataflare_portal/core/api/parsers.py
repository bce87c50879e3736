"""The API's JSON parser: nesting is bounded before parsing, so hostile bodies get a 400, never a 500.

json.loads recurses per nesting level; a body of 50k nested arrays raises RecursionError, which DRF
would turn into a 500 for every endpoint.
"""

import io

from django.conf import settings
from django.utils.translation import gettext as _
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32


def json_depth_exceeds(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests deeper than max_depth (one iterative pass; strings are skipped)."""
    # Cheap C-speed pre-check: a body with few brackets cannot be deep.
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif ch in "]}":
            depth -= 1
    return False


class BoundedJSONParser(JSONParser):
    """JSONParser with a nesting bound (checked before parsing) and RecursionError turned into a 400."""

    max_depth = MAX_JSON_DEPTH

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            raise ParseError(_("The body is not valid %(enc)s.") % {"enc": encoding})
        if json_depth_exceeds(text, self.max_depth):
            raise ParseError(_("The JSON is nested deeper than %(max)d levels.") % {"max": self.max_depth})
        try:
            return super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            raise ParseError(_("The JSON is nested too deeply."))
