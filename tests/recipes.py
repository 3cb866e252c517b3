"""Shell recipes from the docs, run as written: their exports, and their curl lines as HTTP requests.

bash itself evaluates the documented lines (command substitution, quotes,
``$VARIABLE``), so what the tests send is what a reader's shell would.
Each curl line is replayed with httpx against the test's server instead of
``localhost:8000``; an option this module does not know fails the test, so
a recipe cannot drift into something the tests do not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 60.0
DOCUMENTED_ADDRESS = "localhost:8000"


def fenced_blocks(path: Path, language: str = r"\w*") -> list[str]:
    """The fenced code blocks of a Markdown file (of one language), in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL)


def block_containing(path: Path, needle: str) -> str:
    """The one fenced block of ``path`` that contains ``needle``."""
    blocks = [block for block in fenced_blocks(path) if needle in block]
    assert len(blocks) == 1, f"{path.name}: {len(blocks)} blocks contain {needle!r}"
    return blocks[0]


def line_starting(text: str, prefix: str) -> str:
    """The one line of ``text`` that starts with ``prefix``."""
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{len(lines)} lines start with {prefix!r}"
    return lines[0]


def shell_env() -> dict[str, str]:
    """The environment for documented commands: ``python`` is this interpreter."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _bash(script: str, env: dict[str, str]) -> list[str]:
    # The NUL-separated words the script prints.
    done = subprocess.run(  # noqa: S603 - bash runs our own docs' lines
        ["bash", "-c", script],  # noqa: S607 - bash from PATH, as a reader's shell
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, f"bash failed on {script!r}: {done.stderr}"
    return done.stdout.split("\0")[:-1]


def commands(block: str) -> list[str]:
    """The block's commands, one per item: continuation lines joined, quoted newlines kept."""
    found: list[str] = []
    pending = ""
    for line in block.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        try:
            shlex.split(pending)
        except ValueError:  # a quote still open: the command goes on
            pending += "\n"
            continue
        if pending.strip():
            found.append(pending.strip())
        pending = ""
    assert not pending, f"an unterminated command: {pending!r}"
    return found


def exports(block: str) -> dict[str, str]:
    """Run the block's ``export NAME=...`` lines in bash; return the full environment after them."""
    lines = [line for line in commands(block) if line.startswith("export ")]
    names = [line.removeprefix("export ").split("=", 1)[0] for line in lines]
    assert names, "the recipe exports nothing"
    quoted = " ".join(f'"${name}"' for name in names)
    values = _bash("set -e\n" + "\n".join(lines) + f"\nprintf '%s\\0' {quoted}", shell_env())
    assert all(values), f"an export of {names} came out empty"
    return {**shell_env(), **dict(zip(names, values, strict=True))}


@dataclass
class Curl:
    """One documented curl command, as bash expanded it."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None

    def send(self, client: Any, base_url: str) -> Any:
        """Send it with an httpx client to ``base_url`` (instead of localhost:8000)."""
        return client.request(
            self.method,
            base_url + self.path,
            headers=self.headers,
            content=None if self.data is None else self.data.encode(),
        )


def curls(block: str, env: dict[str, str]) -> list[Curl]:
    """The block's curl commands, in order, expanded by bash with ``env``."""
    found = []
    for command in commands(block):
        if not command.startswith("curl "):
            continue
        words = _bash("printf '%s\\0' " + command.removeprefix("curl "), env)
        found.append(_parse_curl(words))
    assert found, "the recipe has no curl command"
    return found


def _parse_curl(words: list[str]) -> Curl:
    method: str | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    data: str | None = None
    rest = iter(words)
    for word in rest:
        if word == "-s":
            continue
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            data = next(rest)
        elif word.startswith(DOCUMENTED_ADDRESS) and url is None:
            url = word
        else:
            pytest.fail(f"a documented curl command has {word!r}, which the docs tests do not replay")
    assert url is not None, f"a documented curl command has no {DOCUMENTED_ADDRESS} URL: {words}"
    if method is None:
        method = "GET" if data is None else "POST"
    return Curl(method, url.removeprefix(DOCUMENTED_ADDRESS), headers, data)
