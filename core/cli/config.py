"""``cdp config``: the service settings -- effective values, a readiness check, and their reference table.

- ``cdp config`` prints every setting with its environment variable and effective value (secrets masked).
- ``cdp config --check`` also pings Redis and the object store (exit 1 if one does not answer).
- ``cdp config --docs`` prints the Markdown reference table of all settings; ``--update-docs FILE`` rewrites
  the table between the ``<!-- settings-table:start -->`` / ``<!-- settings-table:end -->`` markers of FILE
  (``docs/operations.md``). The descriptions are the comments above each field in ``core/settings.py``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from core.settings import Settings

START_MARKER = "<!-- settings-table:start -->"
END_MARKER = "<!-- settings-table:end -->"
_SECRET_NAME = re.compile(r"secret|password|token", re.IGNORECASE)


@dataclass(frozen=True)
class SettingDoc:
    name: str
    env: str
    type: str
    default: str
    description: str


def _field_comments() -> dict[str, tuple[str, str]]:
    """Field name -> (annotation source, the comment lines right above the field, joined)."""
    source = inspect.getsource(sys.modules[Settings.__module__])
    lines = source.splitlines()
    tree = ast.parse(source)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == Settings.__name__]
    out: dict[str, tuple[str, str]] = {}
    previous: ast.AnnAssign | None = None
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comment: list[str] = []
        row = node.lineno - 2  # 0-based index of the line above the field
        while row >= 0 and lines[row].strip().startswith("#"):
            text = lines[row].strip().lstrip("#").strip()
            if not text.startswith("---"):  # section headers are not descriptions
                comment.insert(0, text)
            row -= 1
        description = " ".join(comment)
        if not description and previous is not None and row == previous.end_lineno - 1:
            # A field right below another one, without its own comment, shares that group's comment.
            description = out[previous.target.id][1]  # type: ignore[union-attr]
        out[node.target.id] = (ast.unparse(node.annotation), description)
        previous = node
    return out


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return f" ({', '.join(parts)})" if parts else ""


def _show_default(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def settings_reference() -> list[SettingDoc]:
    """One entry per Settings field, in declaration order."""
    comments = _field_comments()
    docs = []
    for name, field in Settings.model_fields.items():
        annotation, description = comments.get(name, ("", ""))
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        docs.append(
            SettingDoc(
                name=name,
                env=f"CDP_{name.upper()}",
                type=annotation.replace("'", '"') + _bounds(field.metadata),
                default=_show_default(default),
                description=description or (field.description or ""),
            )
        )
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The Markdown reference table (what ``cdp config --docs`` prints)."""
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for doc in settings_reference():
        rows.append(
            f"| `{doc.env}` | `{_cell(doc.type)}` | `{_cell(doc.default)}` | {_cell(doc.description)} |"
        )
    return "\n".join(rows) + "\n"


def update_docs(path: Path) -> bool:
    """Rewrite the marked table in ``path``; ``True`` if the file changed."""
    text = path.read_text()
    if START_MARKER not in text or END_MARKER not in text:
        raise ValueError(f"{path} has no {START_MARKER} ... {END_MARKER} block to update")
    head, rest = text.split(START_MARKER, 1)
    _, tail = rest.split(END_MARKER, 1)
    new = f"{head}{START_MARKER}\n{settings_markdown()}{END_MARKER}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def _masked(name: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else '""'
    if isinstance(value, dict) and _SECRET_NAME.search(name):
        return "{" + ", ".join(f'"********": "{v}"' for v in value.values()) + "}"
    if isinstance(value, str) and _SECRET_NAME.search(name):
        return "********" if value else '""'
    return _show_default(value)


def _check(settings: Settings) -> list[str]:
    """Ping Redis and the store; the failures, one line each."""
    import redis

    from core.storage import StorageError, store_from_settings

    failures = []
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3).ping()
        print("redis: ok")
    except redis.RedisError as exc:
        failures.append(f"redis ({settings.redis_url}): {exc}")
    store = store_from_settings(settings)
    try:
        store.ping()
        print(f"storage: ok ({store!r})")
    except StorageError as exc:
        failures.append(f"storage: {exc}")
    return failures


def run(args: argparse.Namespace) -> int:
    if args.docs:
        sys.stdout.write(settings_markdown())
        return 0
    if args.update_docs is not None:
        changed = update_docs(args.update_docs)
        print(f"{args.update_docs}: {'updated' if changed else 'already up to date'}")
        return 0
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            print(f"cdp: invalid setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    width = max(len(f"CDP_{name}") for name in Settings.model_fields)
    for name in Settings.model_fields:
        print(f"{f'CDP_{name.upper()}':<{width}}  {_masked(name, getattr(settings, name))}")
    if args.check:
        failures = _check(settings)
        for line in failures:
            print(f"cdp: not ready: {line}", file=sys.stderr)
        return 1 if failures else 0
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show the service settings (CDP_* variables), check Redis and storage, print their reference",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="also ping Redis and the object store")
    group.add_argument("--docs", action="store_true", help="print the Markdown table of all settings")
    group.add_argument(
        "--update-docs", type=Path, metavar="FILE", help="rewrite the settings table between FILE's markers"
    )
    parser.set_defaults(func=run)
