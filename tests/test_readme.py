"""The README's scripts run as written: every fenced ``bash`` block preceded by a
``<!-- tested: NAME -->`` line runs with bash (``-e -o pipefail``) against a fresh server
(``steward serve`` on SQLite, the learner and the job worker on), with ``S`` and ``KEY`` set
as the tour says, in a folder where ``.venv`` is this interpreter's environment (the blocks
run from the repository's folder, where ``scripts/run`` made it), and every ``#   → …``
comment in it matches a line of what the script printed, in order (``…`` after a digit
stands for more digits, elsewhere for anything). ``<!-- tested: NAME, after: OTHER -->``
runs the block named OTHER first, on the same server and in the same folder (a script that
goes on from another one), and checks only its own lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import env_for, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
KEY = "readme-admin-key-0123456789abcdef"
_BLOCK = re.compile(
    r"<!-- tested: (?P<name>[^>,]+?)(?:, after: (?P<after>[^>]+?))? -->\n```bash\n(?P<body>.*?)\n```", re.S
)


def readme_blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in _BLOCK.finditer(README)}


def prerequisites(name: str) -> list[str]:
    """The blocks to run before ``name``, first first."""
    after = {m["name"]: m["after"] for m in _BLOCK.finditer(README)}
    chain: list[str] = []
    while after.get(name):
        name = after[name]
        assert name in after and name not in chain, f"after: {name!r} is not a tested block before it"
        chain.insert(0, name)
    return chain


def venv_here(work: Path) -> None:
    """``work/.venv``: this interpreter's virtual environment (or its bare python)."""
    if sys.prefix != sys.base_prefix:
        (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    else:
        (work / ".venv" / "bin").mkdir(parents=True)
        (work / ".venv" / "bin" / "python").symlink_to(sys.executable)


def expectations(script: str) -> list[str]:
    """The ``→`` comments of a script, continuation lines joined."""
    out: list[str] = []
    lines = script.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s+→ (.*)", line)
        if m is None:
            continue
        text = m[1]
        for nxt in lines[i + 1 :]:
            cont = re.match(r"\s*#\s{4,}(\S.*)", nxt)
            if cont is None or "→" in nxt:
                break
            text += cont[1]
        out.append(text)
    return out


def pattern(expected: str) -> re.Pattern[str]:
    parts = re.split(r"(…)", expected)
    rx = ""
    for k, p in enumerate(parts):
        if p == "…":
            rx += r"\d*" if k and parts[k - 1][-1:].isdigit() else ".*"
        else:
            rx += re.escape(p)
    return re.compile(rx)


def test_the_readme_has_readme_blocks_and_they_expect_something():
    blocks = readme_blocks()
    assert {
        "the tour",
        "the feedback loop",
        "prune and quantize digits",
        "transfer learning",
        "a CSV pushed and retrained",
    } <= set(blocks)
    for name, body in blocks.items():
        assert expectations(body)
        prerequisites(name)


def test_expectation_patterns():
    assert pattern("{'loss': 0.69…, 'n': 3}").fullmatch("{'loss': 0.6915, 'n': 3}")
    assert not pattern("{'loss': 0.69…, 'n': 3}").fullmatch("{'loss': 0.7015, 'n': 3}")
    assert pattern('{"version":2,…}').fullmatch('{"version":2,"at":"x"}')
    assert not pattern('{"version":2,…}').fullmatch('{"version":3,"at":"x"}')


@pytest.mark.parametrize("name", sorted(readme_blocks()))
def test_a_readme_script_runs_as_written(name, tmp_path):
    blocks = readme_blocks()
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    env = env_for(tmp_path, STEWARD_ADMIN_KEY=KEY)
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(server, f"http://127.0.0.1:{port}/readyz", timeout=60)
        work = tmp_path / "work"
        work.mkdir()
        venv_here(work)
        for step in [*prerequisites(name), name]:
            run = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", blocks[step]],
                cwd=work,
                env={**env, "S": f"http://127.0.0.1:{port}", "KEY": KEY},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, f"{step}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    finally:
        stop(server)
    script = blocks[name]
    printed = run.stdout.splitlines()
    at = 0
    for expected in expectations(script):
        rx = pattern(expected)
        while at < len(printed) and not rx.fullmatch(printed[at]):
            at += 1
        assert at < len(printed), f"nothing printed matches {expected!r} (in order); printed:\n{run.stdout}"
        at += 1
