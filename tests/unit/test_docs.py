"""The commands the README and docs/cli.md show work, on the samples they name.

Every `toolforge-admission` command in a `sh` block of those pages is run (from the repository
root, as the pages assume) except those that need a server or a cluster (`serve`, `audit`,
`certs`); none may end in bad input (exit 2). The samples agree with each other, and the
AdmissionReview the README posts is answered.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient

from webhooks.cli import EXIT_BAD_INPUT, main

ROOT = Path(__file__).resolve().parents[1].parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "cli.md"]
NEEDS_A_CLUSTER = ("serve", "audit", "certs")


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for page in PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0].endswith("toolforge-admission"):
                    commands.append((page.name, " ".join(words)))
    return commands


COMMANDS = documented_commands()


def test_the_pages_show_commands() -> None:
    shown = {command.split()[1] for _, command in COMMANDS}
    assert {"review", "test", "policy", "audit"} <= shown


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_a_documented_command_works(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str], page: str,
                                    command: str) -> None:
    words = command.split()
    if words[1] in NEEDS_A_CLUSTER:
        pytest.skip(f"{words[1]} needs a server or a cluster (tests/e2e)")
    monkeypatch.chdir(ROOT)
    code = main(words[1:])
    captured = capsys.readouterr()
    assert code != EXIT_BAD_INPUT, f"{page}: {command}\n{captured.err}"
    assert "error:" not in captured.err


def test_the_table_shown_for_the_samples_is_what_review_prints(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    shown = re.search(r"```\n(KIND .*?)```", page, re.DOTALL)
    assert shown is not None
    monkeypatch.chdir(ROOT)
    main(["review", "--policy", "policies/example-policy.yaml", "examples/objects", "-o",
          "table"])
    printed = capsys.readouterr().out.splitlines()
    for line in shown.group(1).splitlines():
        if line == "...":
            continue
        cells = re.split(r" {3,}", line.split("...")[0].rstrip(" ;"))
        assert any(re.split(r" {3,}", out)[:len(cells) - 1] == cells[:-1]
                   and cells[-1] in out for out in printed), line


def test_the_review_the_readme_posts_is_the_sample_pod(client: FlaskClient) -> None:
    review = json.loads((ROOT / "examples" / "review.json").read_text())
    pod = yaml.safe_load((ROOT / "examples" / "objects" / "pod.yaml").read_text())
    assert review["request"]["object"] == pod
    answer = client.post("/validate/pods", json=review)
    assert answer.status_code == 200
    assert answer.json is not None
    assert answer.json["response"] == {"uid": review["request"]["uid"], "allowed": True}


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    from webhooks.app import create_app

    app = create_app({"POLICY_FILE": str(ROOT / "policies" / "example-policy.yaml"),
                      "POLICY_RELOAD_SECONDS": 0, "TESTING": True})
    return app.test_client()
