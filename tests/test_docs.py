"""The Markdown docs stay well-formed, and docs/api.md's curl examples name real routes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = sorted(
    [
        *(ROOT / "docs").glob("*.md"),
        *(
            path
            for name in ("README.md", "CONTRIBUTING.md", "SECURITY.md")
            if (path := ROOT / name).exists()
        ),
    ]
)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
_PLACEHOLDER = re.compile(r"\{[^}/]+\}|\$\{?[A-Za-z_]+\}?")


def fence_problems(text: str) -> list[str]:
    """Each code fence closes with a bare fence of the same kind before the file ends."""
    problems, opened = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if not match:
            continue
        marker, info = match.groups()
        if opened is None:
            opened = (number, marker)
        elif marker.startswith(opened[1][0]) and len(marker) >= len(opened[1]) and not info.strip():
            opened = None
        elif info.strip():
            problems.append(f"line {number}: a fence opens inside the block from line {opened[0]}")
    if opened is not None:
        problems.append(f"line {opened[0]}: the code block never closes")
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: path.name)
def test_code_fences_are_balanced(path):
    assert fence_problems(path.read_text()) == []


def test_the_fence_check_finds_what_it_should():
    assert fence_problems("```sh\ncurl x\n```\n") == []
    assert fence_problems("```sh\ncurl -X### Jobs\n\n```sh\nmore\n```\n") != []
    assert fence_problems("text\n```json\n{}\n") == ["line 2: the code block never closes"]


def curl_examples(text: str) -> list[tuple[str, str]]:
    """(method, path) of every curl call to the server in the shell blocks of ``text``."""
    calls, in_shell, pending = [], False, ""
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if fence:
            in_shell = not in_shell and fence.group(2).strip() in ("sh", "bash", "shell")
            continue
        if not in_shell:
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if not line.strip().startswith("curl "):
            continue
        try:
            calls.append(_method_and_path(line))
        except ValueError:  # a quoted JSON body goes on over the next lines
            pending = line + "\n"
    return calls


def _method_and_path(command: str) -> tuple[str, str]:
    words = shlex.split(command.replace("...", ""), comments=True)
    words = words[: words.index("|")] if "|" in words else words
    method = "POST" if any(w in ("-d", "--data", "--data-binary") for w in words) else "GET"
    for flag, value in zip(words, words[1:]):
        if flag in ("-X", "--request"):
            method = value
    urls = [word for word in words if word.startswith("$RM/")]
    assert len(urls) == 1, command
    return method, urls[0].removeprefix("$RM").split("?")[0]


def _match(app, method: str, path: str):
    """The URL rule ``method path`` reaches; {id}- and $VAR-style placeholders become 1."""
    concrete = _PLACEHOLDER.sub("1", path)
    adapter = app.url_map.bind("localhost")
    try:
        return adapter.match(concrete, method=method, return_rule=True)[0]
    except (NotFound, MethodNotAllowed):
        return None


def test_every_curl_example_in_the_api_docs_names_a_real_route(app):
    calls = curl_examples((ROOT / "docs" / "api.md").read_text())
    assert len(calls) > 40
    unknown = [f"{method} {path}" for method, path in calls if _match(app, method, path) is None]
    assert unknown == []


def test_the_api_docs_show_every_api_route(app):
    shown = set()
    for method, path in curl_examples((ROOT / "docs" / "api.md").read_text()):
        rule = _match(app, method, path)
        if rule is not None:
            shown.add((method, rule.rule))
    missing = sorted(
        f"{method} {rule.rule}"
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if (method, rule.rule) not in shown
    )
    assert missing == []


def test_the_curl_parser_reads_methods_and_placeholders(app):
    text = (
        "```sh\n"
        'curl -X DELETE -H "Authorization: Bearer $TOKEN" $RM/api/v1/tokens/3    # 204\n'
        "curl -H 'Content-Type: application/json' \\\n"
        "     -d '{\"a\": 1}' $RM/api/v1/hosts/{id}/jobs\n"
        'curl "$RM/api/v1/jobs?host_id=7" | jq .\n'
        "```\n"
    )
    calls = curl_examples(text)
    assert calls == [
        ("DELETE", "/api/v1/tokens/3"),
        ("POST", "/api/v1/hosts/{id}/jobs"),
        ("GET", "/api/v1/jobs"),
    ]
    assert _match(app, "POST", "/api/v1/hosts/{id}/jobs").endpoint == "api.start_job"
    assert _match(app, "PATCH", "/api/v1/tokens/$TOKEN_ID") is None
