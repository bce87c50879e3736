"""Find translatable strings that `makemessages` cannot see (run by `scripts/i18n --check`).

xgettext, which makemessages drives, finds a string only by the name of the function around it:
`gettext`, `gettext_lazy`, `ngettext`, `pgettext`, ... or `_`. So a string is invisible when
a translation function is imported under an alias of another name, or when its message
argument is not a literal (an f-string or a variable). Prints each offence as path:line and
exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", "node_modules", "staticfiles", "var", ".git", "tests", "bench", "docs"}
# The names makemessages passes to xgettext plus xgettext's own Python defaults.
FUNCTIONS = {
    "gettext",
    "gettext_lazy",
    "gettext_noop",
    "ngettext",
    "ngettext_lazy",
    "pgettext",
    "pgettext_lazy",
    "npgettext",
    "npgettext_lazy",
}
UNDERSCORE_OK = {"gettext", "gettext_lazy", "gettext_noop"}  # `_` is a keyword for one-argument forms only
TRANSLATION_MODULES = {"django.utils.translation"}


def _message_arg(call: ast.Call, name: str) -> ast.expr | None:
    index = 1 if name.startswith(("pgettext", "npgettext")) else 0
    return call.args[index] if len(call.args) > index else None


def check_file(path: Path) -> list[str]:
    rel = path.relative_to(ROOT)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: cannot parse: {exc.msg}"]
    problems: list[str] = []
    local_names: dict[str, str] = {}  # local name -> translation function it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in TRANSLATION_MODULES:
            for alias in node.names:
                if alias.name not in FUNCTIONS:
                    continue
                local = alias.asname or alias.name
                local_names[local] = alias.name
                ok = local == alias.name or (local == "_" and alias.name in UNDERSCORE_OK)
                if not ok:
                    problems.append(
                        f"{rel}:{node.lineno}: `{alias.name} as {local}` hides its strings from makemessages; "
                        f"import it as `{alias.name}`" + (" or `_`" if alias.name in UNDERSCORE_OK else "")
                    )
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name is None or (name not in FUNCTIONS and name != "_"):
            continue
        if isinstance(func, ast.Name) and name not in local_names and name not in FUNCTIONS:
            continue  # a local `_` that is not a translation function
        real = local_names.get(name, name)
        arg = _message_arg(node, real if real in FUNCTIONS else "gettext")
        if arg is None:
            continue
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            problems.append(
                f"{rel}:{node.lineno}: {name}() needs a string literal (makemessages cannot read "
                f"`{ast.unparse(arg)[:60]}`); mark the literal itself with gettext_noop/gettext_lazy"
            )
    return problems


def main() -> int:
    problems: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(ROOT).parts):
            continue
        problems.extend(check_file(path))
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} translatable string(s) invisible to makemessages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
