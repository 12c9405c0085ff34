"""The docs cannot rot silently: links resolve, command lines parse, paths and settings exist.

For every Markdown file under docs/:
- every relative link points at a file or folder of the repository, and a `#fragment` into a
  Markdown file names one of its headings (GitHub's slugs);
- every command line in a fenced code block that runs one of our CLIs (`edgeloop`, `edgeloop-server`,
  `edgeloop-agent`, `edgeloop-compile`, `python -m compiler`) parses with that CLI's real argparse
  parser (nothing runs: `parse_args` only);
- every `EDGELOOP_*` variable the docs name is a server Settings field or is read somewhere in
  the code, deploy files or scripts;
- every repository path in a code span (`tests/e2e/x.py`, `tests/x.py::test_name`) exists.

The checkers are plain functions so the tests can also prove they fail on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(\s*)(```|~~~)(.*)$")
_ENV = re.compile(r"\bEDGELOOP_[A-Z0-9_]*[A-Z0-9]\b")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")"}
_SHELL_LANGS = {"", "sh", "bash", "shell", "console", "shell-session", "text"}


def doc_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


# ------------------------------------------------------------------ links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _outside_fences(markdown):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _outside_fences(markdown: str) -> Iterator[str]:
    fence = ""
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if m and (not fence or m.group(2) == fence):
            fence = "" if fence else m.group(2)
            continue
        if not fence:
            yield line


def broken_links(path: Path, markdown: str, root: Path = ROOT) -> list[str]:
    """Relative links of `markdown` (a file at `path` inside `root`) that do not resolve, with the reason."""
    problems = []
    for line in _outside_fences(markdown):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{target}: {dest} does not exist")
                continue
            if root not in dest.parents and dest != root:
                problems.append(f"{target}: points outside the repository")
                continue
            if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
                problems.append(f"{target}: no heading #{fragment} in {dest.name}")
    return problems


# ------------------------------------------------------------------ command lines


@dataclass(frozen=True)
class Command:
    cli: str
    argv: list[str]
    line: str


def _agent_parser() -> argparse.ArgumentParser:
    from agent.cli import build_parser

    return build_parser()


def _server_parser() -> argparse.ArgumentParser:
    from fleet_server.cli import build_parser

    return build_parser()


def _operator_parser() -> argparse.ArgumentParser:
    from fleet_server.operator_cli import build_parser

    return build_parser()


def _compiler_parser() -> argparse.ArgumentParser:
    from compiler.cli import _parser

    return _parser()


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "edgeloop": _operator_parser,
    "edgeloop-server": _server_parser,
    "edgeloop-agent": _agent_parser,
    "edgeloop-compile": _compiler_parser,
}


@cache
def parser_for(cli: str) -> argparse.ArgumentParser:
    return PARSERS[cli]()


def _code_blocks(markdown: str) -> Iterator[str]:
    fence, lang = "", ""
    body: list[str] = []
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if m and not fence:
            fence, lang, body = m.group(2), m.group(3).strip().lower(), []
        elif m and m.group(2) == fence:
            if lang in _SHELL_LANGS:
                yield "\n".join(body)
            fence = ""
        elif fence:
            body.append(line)


def _logical_lines(block: str) -> Iterator[str]:
    pending = ""
    for raw in block.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _split(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in _SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _command(tokens: list[str], line: str) -> Command | None:
    while tokens and (_ASSIGNMENT.match(tokens[0]) or tokens[0] in ("sudo", "env", "exec", "time")):
        tokens = tokens[1:]
        if tokens and tokens[0] in ("-u", "-E") and len(tokens) > 1:
            tokens = tokens[2:] if tokens[0] == "-u" else tokens[1:]
    if not tokens:
        return None
    head = Path(tokens[0]).name
    if head in PARSERS:
        return Command(head, tokens[1:], line)
    if re.fullmatch(r"python3?(\.\d+)?", head) and tokens[1:3] == ["-m", "compiler"]:
        return Command("edgeloop-compile", tokens[3:], line)
    return None


def commands(markdown: str) -> list[Command]:
    """Command lines of our CLIs in the fenced shell blocks of `markdown`."""
    out = []
    for block in _code_blocks(markdown):
        for line in _logical_lines(block):
            try:
                segments = _split(line)
            except ValueError:  # not shell (a TOML value, prose): nothing of ours to check
                continue
            for tokens in segments:
                cmd = _command(tokens, line)
                if cmd is not None:
                    out.append(cmd)
    return out


def parse_error(cmd: Command) -> str | None:
    """None when the real parser accepts `cmd`, else what argparse said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser_for(cmd.cli).parse_args(cmd.argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help exits 0
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


# ------------------------------------------------------------------ environment variables


@cache
def known_variables() -> frozenset[str]:
    """Settings fields as EDGELOOP_<FIELD>, plus every EDGELOOP_* name in code, deploy files and scripts."""
    from fleet_server.settings import Settings

    names = {f"EDGELOOP_{field.upper()}" for field in Settings.model_fields}
    names |= _agent_section_variables()
    for folder in (
        "agent",
        "fleet_server",
        "compiler",
        "protos",
        "scripts",
        "deploy",
        "firmware_images",
        "bench",
    ):
        base = ROOT / folder
        if not base.exists():
            continue
        for path in base.rglob("*"):
            if path.is_file() and path.suffix in {
                ".py",
                ".sh",
                ".toml",
                ".service",
                ".yaml",
                ".yml",
                ".conf",
                "",
            }:
                try:
                    names.update(_ENV.findall(path.read_text(errors="ignore")))
                except OSError:
                    continue
    names.update(_ENV.findall((ROOT / "Makefile").read_text()))
    return frozenset(names)


def _agent_section_variables() -> set[str]:
    """`EDGELOOP_AGENT_<SECTION>_<KEY>` for every key of the agent's config file sections."""
    import dataclasses

    from agent.config import _SECTIONS
    from agent.federated.client import FederatedConfig

    out = {
        f"EDGELOOP_AGENT_{section.upper()}_{f.name.upper()}"
        for section, cls in _SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    out |= {f"EDGELOOP_AGENT_FEDERATED_{f.name.upper()}" for f in dataclasses.fields(FederatedConfig)}
    return out


def unknown_variables(markdown: str) -> list[str]:
    """EDGELOOP_* names in `markdown` that nothing reads. A name ending in `_` or `…` is a prefix."""
    known = known_variables()
    out = []
    for name in sorted(set(_ENV.findall(markdown))):
        if name in known or any(k.startswith(name + "_") for k in known):
            continue
        out.append(name)
    return out


# ------------------------------------------------------------------ repository paths in code spans

_TOP = (
    "agent/",
    "fleet_server/",
    "compiler/",
    "protos/",
    "tests/",
    "deploy/",
    "firmware_images/",
    "bench/",
    "scripts/",
)
_SPAN = re.compile(r"`([^`\s]+)`")


def missing_paths(markdown: str, root: Path = ROOT) -> list[str]:
    """Code spans naming a repository path (`tests/x.py`, `tests/x.py::test_y`) that does not exist.

    Spans with a placeholder (`<class>`, `{a,b}`, `*`, `…`) are patterns, not paths, and are skipped.
    """
    out = []
    for line in _outside_fences(markdown):
        for span in _SPAN.findall(line):
            if not span.startswith(_TOP) or any(c in span for c in "<>{}*…$"):
                continue
            path, _, test = span.partition("::")
            target = root / path
            defined = not test or (
                target.is_file()
                and re.search(rf"^(async )?def {re.escape(test)}\b", target.read_text(), re.M)
            )
            if not target.exists() or not defined:
                out.append(span)
    return out


# ------------------------------------------------------------------ tests


def test_docs_exist_and_the_index_links_every_page() -> None:
    pages = doc_files()
    assert (DOCS / "README.md") in pages
    index = (DOCS / "README.md").read_text()
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in _LINK.findall(index)}
    missing = [p.name for p in pages if p != DOCS / "README.md" and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link: {missing}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path, path.read_text()) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_command_lines_parse_with_the_real_cli(path: Path) -> None:
    bad = [f"{c.line!r}: {err}" for c in commands(path.read_text()) if (err := parse_error(c)) is not None]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_repository_paths_named_in_code_exist(path: Path) -> None:
    assert missing_paths(path.read_text()) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_environment_variables_exist(path: Path) -> None:
    assert unknown_variables(path.read_text()) == []


def test_the_docs_really_show_commands_of_every_cli() -> None:
    """Guards the extractor: if it silently found nothing, the parse test would pass on rot."""
    found = [c for p in doc_files() for c in commands(p.read_text())]
    assert {c.cli for c in found} == set(PARSERS)
    assert len(found) >= 30


def test_the_checkers_catch_rot(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n")
    bad_md = (
        "[gone](no-such-file.md) [ok](page.md#title) [bad anchor](page.md#nope) [web](https://x.org)\n"
        "```sh\n"
        "edgeloop devices frobnicate\n"
        "EDGELOOP_SERVER=http://x edgeloop-server run --no-such-flag  # comment\n"
        "edgeloop-agent enroll --token bt_x && python -m compiler inspect\n"
        "edgeloop release deploy 7 dev-a | tee out\n"
        "```\n"
        "EDGELOOP_NO_SUCH_SETTING and EDGELOOP_DATABASE_URL\n"
    )
    assert [p.split(":")[0] for p in broken_links(page, bad_md, root=tmp_path)] == [
        "no-such-file.md",
        "page.md#nope",
    ]
    found = commands(bad_md)
    assert [(c.cli, c.argv[:2]) for c in found] == [
        ("edgeloop", ["devices", "frobnicate"]),
        ("edgeloop-server", ["run", "--no-such-flag"]),
        ("edgeloop-agent", ["enroll", "--token"]),
        ("edgeloop-compile", ["inspect"]),
        ("edgeloop", ["release", "deploy"]),
    ]
    verdicts = [parse_error(c) is None for c in found]
    assert verdicts == [False, False, True, False, True]
    assert unknown_variables(bad_md) == ["EDGELOOP_NO_SUCH_SETTING"]
    spans = (
        "`tests/unit/test_docs.py` `tests/unit/test_docs.py::test_the_checkers_catch_rot` `tests/nope.py`\n"
    )
    spans += "`tests/unit/test_docs.py::test_nope` `firmware_images/<class>/` `deploy/{a,b}/` `/etc/x`\n"
    assert missing_paths(spans) == ["tests/nope.py", "tests/unit/test_docs.py::test_nope"]
