"""The web UI over real HTTP with input no page would send: release numbers that no release
can have in URLs and forms, and form bodies past the limit, sent chunked. Each is answered
with a clear 4xx and changes nothing."""

from __future__ import annotations

import pytest
import requests

from orchestrator.web.routes import FORM_LIMIT
from tests.serve.hostile import post_chunked
from tests.web.conftest import Served
from tests.web.test_actions import log_in, served, snapshot

__all__ = ["served"]  # the fixture, shared with test_actions


@pytest.mark.parametrize("number", [str(10**30), str(2**63), "0", "-1", "abc", "1e3", "%20"])
def test_a_release_number_no_release_can_have_is_404(served: Served, number: str) -> None:
    answer = requests.get(f"{served.url}/pipelines/us/releases/{number}", timeout=10)
    assert answer.status_code == 404
    assert "us has no such release (release: " in answer.text
    assert "is not a release number (1 to 2,147,483,647)" in answer.text
    assert requests.get(f"{served.url}/pipelines/us/releases/4", timeout=10).ok


@pytest.mark.parametrize("to", [str(10**30), "-1", "0", "abc", "1.5", "+4"])
def test_a_rollback_to_a_number_no_release_can_have_is_400(served: Served, to: str) -> None:
    client, csrf, _ = log_in(served)
    before = snapshot(served.store)
    answer = client.post(served.url + "/pipelines/us/rollback",
                         data={"csrf": csrf, "to": to, "reason": "bad"},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 400
    assert "choose the release to roll back to (to: " in answer.text
    assert snapshot(served.store) == before


@pytest.mark.parametrize("path", ["/login", "/logout", "/pipelines/us/lock"])
def test_a_form_past_the_limit_is_413_as_it_arrives_chunked(served: Served, path: str) -> None:
    before = snapshot(served.store)
    answer = post_chunked(served.url, path,
                          {"Content-Type": "application/x-www-form-urlencoded"}, 64 * 1024**2)
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert f"at most {FORM_LIMIT:,} bytes" in answer.body.decode()
    assert answer.sent < 64 * 1024**2  # the client stopped sending: nothing read it
    assert snapshot(served.store) == before
    assert requests.get(served.url + "/pipelines/us", timeout=10).ok
