"""Hostile requests to a real `ship serve` process: oversized chunked bodies with and
without a signature, JSON nested 100,000 deep, and release numbers past the store's range
in a URL and in a Slack button. Each gets its 4xx, the server stays healthy, the store is
unchanged, and no traceback reaches the server's log. (How much memory the server holds
meanwhile is measured by bench/faults.py --only http, not asserted here.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.serve.conftest import GITHUB_SECRET, Serving, config_text, github_signature, press
from tests.serve.hostile import post_chunked

pytestmark = pytest.mark.usefixtures("prefect_api")
GB = 1024**3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Serving]:
    serving = Serving(tmp_path_factory.mktemp("hostile"), prefect_api,
                      config_text(pipelines=("us",)))
    try:
        yield serving
    finally:
        serving.stop()
    assert "Traceback" not in serving.log(), serving.log()


def untouched(server: Serving) -> None:
    assert requests.get(f"{server.url}/healthz", timeout=10).json()["ok"] is True
    assert server.store.pipeline_state("us").pending_merges == 0
    assert server.store.events("us") == [] and server.store.releases("us") == []
    assert "Traceback" not in server.log(), server.log()


def test_an_unsigned_chunked_gigabyte_is_refused_unread(server: Serving) -> None:
    answer = post_chunked(server.url, "/webhooks/github", {"X-GitHub-Event": "push"}, GB)
    assert answer.status == 401 and answer.headers["connection"] == "close"
    assert b"X-Hub-Signature-256" in answer.body
    assert answer.sent < GB  # the answer came first, and the client stopped
    untouched(server)


def test_a_chunked_body_past_25_mb_with_a_forged_signature_is_413(server: Serving) -> None:
    answer = post_chunked(server.url, "/webhooks/github",
                          {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
                          GB)
    assert answer.status == 413 and b"at most 26,214,400 bytes" in answer.body
    assert answer.sent < GB
    untouched(server)


def test_a_signed_push_nested_100k_deep_is_400(server: Serving) -> None:
    body = b'{"ref": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = server.github(None, body=body, signature=github_signature(GITHUB_SECRET, body))
    assert answer.status_code == 400
    assert answer.json()["error"] == "body: JSON nested too deeply"
    untouched(server)


def test_release_numbers_past_the_store_are_404_in_a_url_and_400_in_a_button(
        server: Serving) -> None:
    page = requests.get(f"{server.url}/pipelines/us/releases/{10**30}", timeout=10)
    assert page.status_code == 404 and "us has no such release" in page.text
    answer = server.slack(press("ship_rollback", "us", 10**30))
    assert answer.status_code == 400
    assert json.loads(answer.text)["error"].startswith(
        "actions[0].value.release: 1000000000000000000000000000000 is not a release number")
    untouched(server)
