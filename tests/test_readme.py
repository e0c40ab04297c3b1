"""The README and docs/ stay true: every command they document runs as written, their links resolve, their tables match.

Commands are taken from the shell code blocks (```bash, ```sh, ```console) and from inline code that
starts with a known program, in README.md, docs/*.md and benchmarks/README.md. Each is checked as
cheaply as it can be checked for real: `make -n TARGET`, `python -m MODULE ... --help` (and every
option it names must appear in that help), `locust -f FILE --list` (and the user classes it names),
`gunicorn --check-config`, the files named. Long runs (training, benchmarks, load) are not started.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCUMENTS = [README, *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "benchmarks" / "README.md"]
VENV_BIN = Path(sys.executable).parent  # the venv running the tests: `locust`, `gunicorn`... live beside it
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
# Programs the docs may show, each with its check below; inline code starting with one is a command too.
PROGRAMS = PYTHONS | {"make", "locust", "streamlit", "gunicorn", "jupyter", ".ci/run"}
TIMEOUT = 60
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
TRAILING_COMMENT = re.compile(r"\s+#.*$")
OPTION = re.compile(r"^(--?[A-Za-z][\w.-]*)(?:=.*)?$")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
ENV_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\(|_env_\w+\()\s*["']([A-Z][A-Z0-9_]+)["']""")


def relative(path: Path) -> str:
    """Return a path relative to the repository, for messages."""
    return str(path.relative_to(REPO_ROOT))


def without_code(text: str) -> str:
    """Return markdown text with fenced blocks and inline code removed (links there are examples)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def block_commands(language: str, body: str) -> list[str]:
    """Return the commands of one shell code block, continuations joined, console output dropped."""
    if language not in SHELL_LANGUAGES:
        return []
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.strip()
        if language == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def shell_lines(text: str) -> list[str]:
    """Return the commands of every shell code block of a document."""
    return [command for language, body in FENCE.findall(text) for command in block_commands(language, body)]


def inline_commands(text: str) -> list[str]:
    """Return inline code spans outside code blocks that start with a documented program."""
    spans = INLINE_CODE.findall(FENCE.sub("", text))
    found = []
    for span in spans:
        words = program_words(span)
        if words and words[0] in PROGRAMS and len(words) > 1:
            found.append(span)
    return found


def program_words(command: str) -> list[str]:
    """Split a command into words without its leading VAR=value assignments and trailing comment."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words


def assignments(command: str) -> dict[str, str]:
    """Return the VAR=value assignments that prefix a command."""
    env = {}
    for word in shlex.split(command, comments=True):
        if not ASSIGNMENT.match(word):
            break
        name, value = word.split("=", 1)
        env[name] = value
    return env


def documented_commands() -> list[tuple[str, str]]:
    """Return (document, command) for every command in the docs, each once and without its comment."""
    seen: dict[str, str] = {}
    for document in DOCUMENTS:
        text = document.read_text()
        for command in shell_lines(text) + inline_commands(text):
            seen.setdefault(" ".join(TRAILING_COMMENT.sub("", command).split()), relative(document))
    return [(document, command) for command, document in seen.items()]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a program from the repository root and capture its output."""
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@functools.cache
def help_text(args: tuple[str, ...]) -> str:
    """Return a program's `--help` output, failing if it does not exit 0."""
    result = run([*args, "--help"])
    assert result.returncode == 0, f"`{' '.join(args)} --help` exited {result.returncode}:\n{result.stderr[-2000:]}"
    return result.stdout


def options(words: list[str]) -> list[str]:
    """Return the option names (`-u`, `--epochs`) among a command's words."""
    return [match.group(1) for word in words if " " not in word and (match := OPTION.match(word))]


def assert_options_known(command: str, words: list[str], help_output: str) -> None:
    """Every option a documented command uses must be one its program still accepts."""
    for option in options(words):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_output), (
            f"`{command}`: {option} is not an option of the program any more"
        )


def assert_files_exist(command: str, words: list[str]) -> None:
    """Every repository path a command names must exist."""
    for word in words:
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)*\.(py|ipynb|toml|txt)", word) and not word.startswith("/"):
            assert (REPO_ROOT / word).exists(), f"`{command}` names {word}, which does not exist"


def check_make(command: str, words: list[str]) -> None:
    """`make TARGET ...`: the target exists and its recipe expands (`make -n`)."""
    targets = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
    assert targets, f"`{command}` names no make target"
    variables = [word for word in words[1:] if "=" in word]
    for target in targets:
        result = run(["make", "-n", target, *variables])
        assert result.returncode == 0, f"`make -n {target}` failed:\n{result.stderr[-2000:]}"


def check_python(command: str, words: list[str]) -> None:
    """`python -m MODULE [SUBCOMMAND] ...`: `--help` exits 0 and lists every option used."""
    assert len(words) > 2 and words[1] == "-m", f"`{command}`: only `python -m MODULE` commands are documented"
    module, rest = words[2], words[3:]
    leading = []
    for word in rest:  # sub-commands and positional paths come before the first option
        if word.startswith("-"):
            break
        leading.append(word)
    assert_files_exist(command, rest)
    assert_options_known(command, rest, help_text((sys.executable, "-m", module, *leading)))


def check_locust(command: str, words: list[str], env: dict[str, str]) -> None:
    """`locust -f FILE ...`: the file loads, every user class named is in it, every option is Locust's."""
    assert "-f" in words, f"`{command}`: name the locustfile with -f"
    locustfile = words[words.index("-f") + 1]
    assert (REPO_ROOT / locustfile).is_file(), f"`{command}`: {locustfile} does not exist"
    listed = run([str(VENV_BIN / "locust"), "-f", locustfile, "--list"], env=env)
    assert listed.returncode == 0, f"`locust -f {locustfile} --list` failed:\n{listed.stderr[-2000:]}"
    classes = set(listed.stdout.split())
    for name in (word for word in words if re.fullmatch(r"[A-Z]\w*User", word)):
        assert name in classes, f"`{command}`: {locustfile} has no user class {name}"
    assert_options_known(command, words[1:], help_text((str(VENV_BIN / "locust"), "-f", locustfile)))


def check_gunicorn(command: str, words: list[str], tmp_path: Path) -> None:
    """`gunicorn -c CONF APP`: the config and the app load (`--check-config`)."""
    assert_files_exist(command, words[1:])
    # Given a metrics folder, the config makes none of its own (check-config never runs its on_exit cleanup).
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DATA_DIR": str(tmp_path / "data")}
    result = run([str(VENV_BIN / "gunicorn"), "--check-config", *words[1:]], env=env)
    assert result.returncode == 0, f"`{command}` does not load:\n{result.stderr[-2000:]}"


def check_streamlit(command: str, words: list[str]) -> None:
    """`streamlit run FILE ...`: the app file exists and compiles; every option is one `streamlit run` takes."""
    assert words[1] == "run", f"`{command}`: only `streamlit run` is documented"
    app = REPO_ROOT / words[2]
    assert app.is_file(), f"`{command}`: {words[2]} does not exist"
    compile(app.read_text(), str(app), "exec")
    assert_options_known(command, words[3:], help_text((str(VENV_BIN / "streamlit"), "run")))


def check_jupyter(command: str, words: list[str]) -> None:
    """`jupyter nbconvert ... NOTEBOOK`: the notebook exists and nbconvert takes every option."""
    assert words[1] == "nbconvert", f"`{command}`: only `jupyter nbconvert` is documented"
    notebooks = [word for word in words if word.endswith(".ipynb") and not word.startswith("/")]
    assert notebooks, f"`{command}` names no notebook"
    assert_files_exist(command, words[2:])
    assert_options_known(command, words[2:], help_text((str(VENV_BIN / "jupyter"), "nbconvert")))


@pytest.mark.e2e  # about thirty short program starts: a few seconds each on a busy 2-core machine
@pytest.mark.parametrize(
    ("document", "command"),
    [pytest.param(document, command, id=f"{document}: {command}") for document, command in documented_commands()],
)
def test_documented_command_works_as_written(document: str, command: str, tmp_path: Path) -> None:
    """Each command in the README and docs names a target, module, file and options that exist."""
    words = program_words(command)
    assert words, f"{document}: cannot parse `{command}`"
    program = words[0]
    if program in PYTHONS:
        check_python(command, words)
    elif program == "make":
        check_make(command, words)
    elif program in ("locust", ".venv/bin/locust"):
        check_locust(command, words, assignments(command))
    elif program in ("gunicorn", ".venv/bin/gunicorn"):
        check_gunicorn(command, words, tmp_path)
    elif program in ("streamlit", ".venv/bin/streamlit"):
        check_streamlit(command, words)
    elif program in ("jupyter", ".venv/bin/jupyter"):
        check_jupyter(command, words)
    elif program == ".ci/run":
        assert os.access(REPO_ROOT / program, os.X_OK), ".ci/run is missing or not executable"
    else:
        pytest.fail(f"{document}: `{command}` runs {program}, which this test has no check for: add one")


def test_readme_opens_with_the_two_commands_and_documents_the_entry_points() -> None:
    """The README's first code block is `make run` and `make test`; the public entry points are all documented."""
    text = README.read_text()
    first = [program_words(line)[:2] for line in block_commands(*FENCE.search(text).groups())]
    assert first == [["make", "run"], ["make", "test"]]
    commands = {command for _, command in documented_commands() if command in text}
    for entry in (
        "streamlit run frontend/app.py",
        "gunicorn -c backend/gunicorn.conf.py backend.wsgi:app",
        "python -m backend.store prune --keep N",
    ):
        assert entry in commands, f"the README no longer documents `{entry}`"
    for start in (
        ".venv/bin/python -m backend.train",
        ".venv/bin/python -m backend.evaluate",
        "locust -f locustfile.py",
    ):
        assert any(command.startswith(start) for command in commands), f"the README no longer documents `{start}`"


def heading_anchors(path: Path) -> set[str]:
    """Return the GitHub anchors of a markdown file's headings."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def document_links() -> list[tuple[str, str]]:
    """Return (document, link) for every relative link and image in the docs, each once per document."""
    found = {}
    for document in DOCUMENTS:
        for target in LINK.findall(without_code(document.read_text())):
            if not re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                found[(relative(document), target)] = None
    return list(found)


@pytest.mark.parametrize(("document", "link"), document_links())
def test_relative_link_resolves(document: str, link: str) -> None:
    """Every relative link and image points at a file that exists, and at a heading that exists."""
    path, _, anchor = link.partition("#")
    target = (REPO_ROOT / document).parent / path if path else REPO_ROOT / document
    assert target.exists(), f"{document} links to {link}, which does not exist"
    if anchor and target.suffix == ".md":
        assert anchor in heading_anchors(target), f"{document} links to {link}: no such heading"


def readme_section(title: str) -> str:
    """Return the text of one `## title` section of the README."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README.read_text(), re.M | re.S)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def test_api_table_lists_every_endpoint(tmp_path: Path) -> None:
    """The README's API table names every path of /openapi.json, and nothing else."""
    from backend.web.app import create_app

    app = create_app({"MODEL_DIR": tmp_path / "models", "DATA_DIR": tmp_path / "data"})
    spec_paths = {re.sub(r"\{\w+\}", "{}", path) for path in app.test_client().get("/openapi.json").json["paths"]}
    table = "\n".join(line for line in readme_section("API").splitlines() if line.startswith("|"))
    documented = {re.sub(r"<\w+>", "{}", path) for path in re.findall(r"`(/[^`\s?]*)`", table)}
    assert spec_paths - documented == set(), "endpoints missing from the README's API table"
    assert documented - spec_paths == set(), "the README's API table lists endpoints the API does not have"


def locust_sources() -> list[Path]:
    """Return locustfile.py and the files of the first-party modules it imports, where its settings live."""
    locustfile = REPO_ROOT / "locustfile.py"
    sources = [locustfile]
    for module in sorted(set(re.findall(r"^(?:from|import)\s+(benchmarks\.\w+)", locustfile.read_text(), re.M))):
        path = REPO_ROOT.joinpath(*module.split("."))
        sources += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    assert len(sources) > 1, "locustfile.py imports no helper package: update locust_sources()"
    return sources


def test_configuration_table_lists_every_variable() -> None:
    """Every environment variable the code or the Makefile reads is in the README (Locust's in docs/load-testing.md)."""
    sources = [path for folder in ("backend", "frontend", "deploy") for path in (REPO_ROOT / folder).rglob("*.py")]
    read = {name for source in sources for name in ENV_READ.findall(source.read_text())} - {"PATH"}  # the system's
    read |= set(re.findall(r"^(?:export\s+)?([A-Z_]+)\s*\?=", (REPO_ROOT / "Makefile").read_text(), re.M))
    table = readme_section("Configuration")
    assert {name for name in read if f"`{name}`" not in table} == set(), "variables missing from the README table"
    locust_read = {name for source in locust_sources() for name in re.findall(r"LOCUST_[A-Z0-9_]+", source.read_text())}
    load_testing = (REPO_ROOT / "docs" / "load-testing.md").read_text()
    assert {name for name in locust_read if f"`{name}`" not in load_testing} == set(), (
        "Locust variables missing from docs/load-testing.md"
    )
