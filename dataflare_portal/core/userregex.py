"""User regular expressions run in RE2: linear time in the text, whatever the pattern.

Python's `re` backtracks, so a user's `^(a+)+$` against a long line of a's takes exponential time
and stalls a worker. RE2 (google-re2) has no backreferences or lookaround; patterns that use them are
refused at save/import time with the engine's reason, and callers attach the JSON path.
"""

from __future__ import annotations

import functools

import re2
from django.utils.translation import gettext

__all__ = ["MAX_PATTERN_LENGTH", "UserRegexError", "compile_user_regex", "search_text"]

MAX_PATTERN_LENGTH = 2000
# RE2's compiled-program budget; a pattern that needs more (e.g. "a{1000}{1000}") is refused, not run.
MAX_PROGRAM_BYTES = 8 << 20


class UserRegexError(ValueError):
    """A pattern RE2 cannot run (syntax it lacks, too long, too large); the message says why."""


@functools.lru_cache(maxsize=256)
def compile_user_regex(pattern: str, *, ignore_case: bool = False):
    """A compiled RE2 pattern; raises UserRegexError naming the reason."""
    if not isinstance(pattern, str):
        raise UserRegexError(gettext("A regular expression must be a string."))
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UserRegexError(
            gettext("The regular expression is %(n)d characters; at most %(max)d are allowed.")
            % {"n": len(pattern), "max": MAX_PATTERN_LENGTH}
        )
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        return re2.compile(pattern, options)
    except UnicodeEncodeError:
        raise UserRegexError(gettext("The regular expression contains a lone UTF-16 surrogate.")) from None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise UserRegexError(
            gettext(
                "Not a regular expression the linear-time engine (RE2) can run: %(reason)s. "
                "Backreferences and lookaround are not supported."
            )
            % {"reason": str(reason)[:200]}
        ) from None


def search_text(pattern, text: str) -> bool:
    """Whether `pattern` matches anywhere in `text` (text that cannot be UTF-8 is matched with U+FFFD)."""
    try:
        return pattern.search(text) is not None
    except UnicodeEncodeError:
        return pattern.search(text.encode("utf-8", "replace").decode("utf-8")) is not None
