"""``cdp keys``: API keys of the service (``CDP_API_KEYS_FILE``).

- ``cdp keys create --team T [--role admin] [--file PATH]`` adds a key and prints it once on stdout; the
  file keeps only its sha256 (see :mod:`core.jobs.apikeys`).
- ``cdp keys list [--file PATH]`` prints id, team, role and creation time of each key (never a key).
- ``cdp keys revoke ID [--file PATH]`` removes a key; the API refuses it from its next request on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.jobs import apikeys


def _path(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    from core.settings import get_settings

    path = get_settings().api_keys_file
    if path is None:
        raise ValueError("no keys file: pass --file PATH or set CDP_API_KEYS_FILE")
    return path


def run_create(args: argparse.Namespace) -> int:
    path = _path(args)
    entry, key = apikeys.create_key(path, team=args.team, role=args.role)
    print(key)
    print(f"created key {entry.id} for team {entry.team!r} (role {entry.role}) in {path}; it is shown only "
          "this once", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    for entry in apikeys.read_entries(_path(args)):
        print(f"{entry.id}  {entry.team}  {entry.role}  {entry.created_at}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    if not apikeys.revoke_key(_path(args), args.key_id):
        print(f"cdp: no key {args.key_id!r}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="create, list and revoke API keys",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="keys_command", metavar="ACTION")
    commands.required = True
    file_help = "the keys file (default: CDP_API_KEYS_FILE)"
    create = commands.add_parser("create", help="add a key and print it once")
    create.add_argument("--team", required=True, help="the team the key acts for")
    create.add_argument("--role", choices=apikeys.ROLES, default="member",
                        help="admin: sees every team's jobs and reads /metrics")
    create.add_argument("--file", default=None, help=file_help)
    create.set_defaults(func=run_create)
    listing = commands.add_parser("list", help="list the keys (ids, teams, roles; never the keys)")
    listing.add_argument("--file", default=None, help=file_help)
    listing.set_defaults(func=run_list)
    revoke = commands.add_parser("revoke", help="remove a key")
    revoke.add_argument("key_id", help="the id `cdp keys list` shows")
    revoke.add_argument("--file", default=None, help=file_help)
    revoke.set_defaults(func=run_revoke)
