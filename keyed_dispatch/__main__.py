"""Command line: ``python -m keyed_dispatch COMMAND [options]``.

Each command lives in its own module and is imported only when run, so the
core never pays for the optional parts.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module relative to this package, its help line). Each module
# has ``main(argv: Sequence[str]) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (".demo._harness", "reproduce the webhook race three ways and print the table"),
    "worker": (".postgres._cli", "run jobs from a PostgreSQL queue (needs the postgres extra)"),
    "keys": (".postgres._keys_cli", "list, inspect, pause, resume or cancel the keys of a PostgreSQL queue"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named by ``argv`` and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = ["usage: python -m keyed_dispatch COMMAND [options]", "", "commands:"]
        lines += [f"  {name:10} {help_line}" for name, (_, help_line) in COMMANDS.items()]
        stream = sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr
        if args and args[0] not in ("-h", "--help"):
            lines.append(f"\nunknown command: {args[0]}")
        print("\n".join(lines), file=stream)
        return 0 if stream is sys.stdout else 2
    try:
        module = importlib.import_module(COMMANDS[args[0]][0], __package__)
    except ImportError as exc:
        # A missing optional dependency: its module's message names the extra.
        print(f"python -m keyed_dispatch {args[0]}: {exc}", file=sys.stderr)
        return 2
    status: int = module.main(args[1:])
    return status


if __name__ == "__main__":
    sys.exit(main())
