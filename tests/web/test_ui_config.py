"""The `ui:` section of pipelines.yaml: optional, safe by default, typos refused."""

from __future__ import annotations

import pytest

from orchestrator import config
from tests.conftest import SIM_PIPELINES


def test_without_a_ui_section_actions_are_off() -> None:
    ui = config.parse(SIM_PIPELINES).ui
    assert ui.auth == "none" and ui.operators == []


def test_a_ui_section_is_read() -> None:
    loaded = config.parse(SIM_PIPELINES + """
ui:
  auth: header
  user_header: X-Auth-Request-User
  trusted_proxies: [127.0.0.1]
  operators: [alice, bob]
""")
    assert loaded.ui.auth == "header" and loaded.ui.operators == ["alice", "bob"]
    assert loaded.ui.user_header == "X-Auth-Request-User"
    assert loaded.ui.token_env == "SHIP_UI_TOKEN"


@pytest.mark.parametrize(("section", "path", "message"), [
    ("ui: {auth: header}", "ui", "auth: header needs `operators`"),
    ("ui: {auth: token, tokens_env: X}", "ui.tokens_env", "unknown field"),
    ("ui: {auth: password}", "ui.auth", "'none', 'token' or 'header'"),
])
def test_a_wrong_ui_section_is_reported_with_its_line(section: str, path: str,
                                                      message: str) -> None:
    text = SIM_PIPELINES + section + "\n"
    with pytest.raises(config.ConfigError) as error:
        config.parse(text)
    [problem] = error.value.problems
    assert problem.path == path and message in problem.message
    assert problem.line == text.count("\n")
