"""Every snippet in the docs and the README is checked against the code (issue 11, item 12):
each resource in a ```yaml block decodes as this version's kinds decode it (what `apply`
would accept), and each `meshline ...` command in a shell block names a real command with
options it takes. The walkthrough tests (tests/e2e/test_*docs*.py, *_walkthrough.py) run the
longer snippets for real; this catches a renamed flag or field in all the others."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from meshline.cli.main import cli
from meshline.core.errors import ValidationError
from meshline.kinds import default_kinds
from meshline.policies.translate import translators

ROOT = Path(__file__).parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SHELLS = ("sh", "bash", "console", "shell")
# a snippet that shows a shape, not a resource (its placeholders are for the reader)
FRAGMENT = re.compile(r"<[A-Za-z][^>]*>|\.\.\.")
STOP = ("|", "||", "&&", ";", "&", ";;", "|&")


def blocks(lang: tuple[str, ...]) -> list[tuple[str, int, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) in lang:
                out.append((str(doc.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1, m.group(2)))
    return out


def resources() -> list[tuple[str, dict[str, object]]]:
    found = []
    for where, line, body in blocks(("yaml",)):
        if FRAGMENT.search(body):
            continue
        for i, doc in enumerate(yaml.safe_load_all(body)):
            if isinstance(doc, dict) and "kind" in doc:
                found.append((f"{where}:{line} document {i + 1} ({doc['kind']} {doc.get('name', '')})", doc))
    return found


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for where, line, body in blocks(SHELLS):
        joined = re.sub(r"\\\n", " ", body)
        for n, text in enumerate(joined.splitlines()):
            text = re.sub(r"^\s*\$\s+", "", text)
            if FRAGMENT.search(text.split("#", 1)[0]) or re.search(r"\s\[-", text):
                continue  # a synopsis with placeholders for the reader
            text = re.sub(r"(?<=\s)\d>", ">", text)  # 2>/dev/null: a redirect, not an argument 2
            lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            try:
                words = list(lexer)
            except ValueError:
                continue  # an open quote: a heredoc's body, not a command
            for start, word in enumerate(words):
                if word != "meshline":
                    continue
                if start and words[start - 1] not in (*STOP, "(", "$(", "sudo", "exec", "time", "watch", "-E"):
                    continue  # an argument ("meshline" as a name), not the command
                argv: list[str] = []
                for w in words[start + 1:]:
                    if w in STOP or w[0] in "<>()":
                        break
                    argv.append(w)
                found.append((f"{where}:{line + n + 1}: meshline {' '.join(argv)}", argv))
    return found


RESOURCES = resources()
COMMANDS = commands()


def test_the_docs_have_snippets_to_check() -> None:
    assert len(RESOURCES) >= 30 and len(COMMANDS) >= 100, (len(RESOURCES), len(COMMANDS))
    # and the check catches what it is for
    for wrong in (["aply", "-f", "x.yaml"], ["get", "dataplanes", "--nope"], ["stat", "--window", "2h"]):
        with pytest.raises(click.ClickException):
            _parse(wrong)


@pytest.mark.parametrize("where,doc", RESOURCES, ids=[w for w, _ in RESOURCES])
def test_each_documented_resource_is_valid(where: str, doc: dict[str, object]) -> None:
    kinds = default_kinds()
    try:  # as apply takes it: a Gateway API or SMI document is translated, the rest decoded
        for translate in translators(kinds, lambda _mesh: {}):
            if translate(dict(doc)) is not None:
                return
        kinds.decode(doc)
    except ValidationError as err:
        pytest.fail(f"{where}: {err}")


def _parse(argv: list[str]) -> None:
    """Parse ``meshline ARGV`` as the CLI would, down to the command, without running it."""
    ctx = cli.make_context("meshline", list(argv))
    cmd: click.Command = cli
    while isinstance(cmd, click.Group):
        rest = [*ctx.protected_args, *ctx.args]
        if not rest:
            return
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"no command '{rest[0]}'")
        ctx = sub.make_context(rest[0], rest[1:], parent=ctx)
        cmd = sub


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_each_documented_command_parses(where: str, argv: list[str]) -> None:
    if any(a in ("-h", "--help", "--version") for a in argv):
        return  # prints and exits: parsing stops there
    try:
        _parse(argv)
    except click.BadParameter as err:
        if "does not exist" in str(err):
            return  # a file the reader makes first
        pytest.fail(f"{where}: {err.format_message()}")
    except click.ClickException as err:
        pytest.fail(f"{where}: {err.format_message()}")
