"""Slack: one message per release in the pipeline's channel, updated in place at each stage.

The message shows the commits and their authors, the stage timeline, the gate results,
links to dashboards and logs, the lock, and the buttons Roll back, Lock and Unlock (see
orchestrator.slack_actions for what they do). When a release goes live its authors are
mentioned in the message's thread and asked to verify their change; a breach, a stall and
a failed rollback are also posted loudly (@here) in the channel.

The message is drawn from the store when it is sent, so it always shows the release as it
is. Sends go through an Outbox: retried on 429 (after Retry-After) and 5xx within a
budget, recorded when they fail, and never in a release's way. The message's ts and
channel are kept in the store (notice_refs), so any process can update it.
"""

from __future__ import annotations

import json
import math
import urllib.error
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.webhook import WebhookClient

from orchestrator.config import SlackNotify
from orchestrator.notify import Notice
from orchestrator.notify.outbox import Outbox, Retry, retry_after
from orchestrator.release import SHIPPED, State
from orchestrator.store import Lock, Release, Store
from shiptypes import GateResult, Link, ProviderContext

NOTIFIER = "slack"
MAX_COMMITS_SHOWN = 10
ROLLBACK, LOCK, UNLOCK = "ship_rollback", "ship_lock", "ship_unlock"
_STATE_ICON = {
    State.QUEUED: "⏳", State.BUILDING: "🔨", State.PREPROD: "🧪", State.GATING: "🚦",
    State.READY: "🚪", State.PROMOTING: "🚚", State.LIVE: "🚀", State.WATCHING: "👀",
    State.DONE: "✅",
    State.HALTED: "⛔", State.FAILED: "❌", State.ROLLED_BACK: "⏪", State.SUPERSEDED: "⏭",
}
_TIMELINE = (State.QUEUED, State.BUILDING, State.PREPROD, State.GATING, State.READY,
             State.PROMOTING, State.LIVE, State.WATCHING, State.DONE, State.HALTED,
             State.FAILED, State.ROLLED_BACK)


class SlackNotifier:
    name = NOTIFIER

    def __init__(self, config: SlackNotify, context: ProviderContext, store: Store,
                 client: WebClient | None = None, outbox: Outbox | None = None) -> None:
        self.config = config
        self.store = store
        self._token = context.env.get(config.token_env, "")
        self._client = client
        self.outbox = outbox or Outbox(NOTIFIER, store, config)

    @property
    def client(self) -> WebClient:
        if not self._token and self._client is None:
            raise SlackError(f"{self.config.token_env} is not set: cannot post to Slack")
        if self._client is None:
            # Retries are the outbox's: the client's own would hide them from its budget.
            self._client = WebClient(token=self._token, base_url=self.config.api_url,
                                     timeout=math.ceil(self.config.request_timeout),
                                     retry_handlers=[])
        return self._client

    # --- the Notifier protocol ---------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        if notice.release_id is not None:
            self._queue(notice, "the release message", lambda: self._show(notice))
            if notice.kind == "live":
                self._queue(notice, "the call to verify", lambda: self._ask_authors(notice))
        if loud(notice):
            self._queue(notice, f"the {notice.kind} alert", lambda: self._shout(notice))

    def respond(self, pipeline: str, response_url: str, text: str) -> None:
        """Tell the person who pressed a button why nothing happened (only they see it)."""
        self.outbox.put(pipeline, None, "a reply to a button",
                        lambda: self._reply(response_url, text))

    def flush(self, timeout: float) -> bool:
        return self.outbox.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        return self.outbox.close(timeout)

    # --- sends (on the outbox's thread) ----------------------------------------------------

    def _queue(self, notice: Notice, what: str, send: Callable[[], None]) -> None:
        self.outbox.put(notice.pipeline, notice.release_id, f"{what} ({notice.kind})", send)

    def _show(self, notice: Notice) -> None:
        release = self.store.release(notice.release_id)  # type: ignore[arg-type]
        state = self.store.pipeline_state(release.pipeline)
        text, blocks = message(release, self.store.gate_results(release.id), state.lock,
                               live=state.live.id == release.id if state.live else False,
                               notice=notice, users=self.config.users)
        kept = self.store.notice_ref(release.id, NOTIFIER)
        if kept is None:
            answer = self._call(lambda: self.client.chat_postMessage(
                channel=self.config.channel, text=text, blocks=blocks, unfurl_links=False))
            self.store.keep_notice_ref(release.id, NOTIFIER, answer["ts"],
                                       {"channel": answer["channel"]})
            return
        self._call(lambda: self.client.chat_update(channel=kept.data["channel"], ts=kept.ref,
                                                   text=text, blocks=blocks))

    def _ask_authors(self, notice: Notice) -> None:
        kept = self.store.notice_ref(notice.release_id, NOTIFIER)  # type: ignore[arg-type]
        release = self.store.release(notice.release_id)  # type: ignore[arg-type]
        who = mentions(release.commits, self.config.users) or "whoever merged this"
        text = (f"{who}: {release.name} is live. Please check that your change works in "
                "production, and press Roll back on the message above if it does not.")
        channel = kept.data["channel"] if kept else self.config.channel
        self._call(lambda: self.client.chat_postMessage(
            channel=channel, text=text, thread_ts=kept.ref if kept else None))

    def _shout(self, notice: Notice) -> None:
        links = link_list(notice.links)
        authors = ""
        if notice.release_id is not None:
            release = self.store.release(notice.release_id)
            authors = mentions(release.commits, self.config.users)
        text = f"<!here> 🚨 *{escape(notice.pipeline)}*: {escape(notice.text)}"
        text += (f"\nAuthors: {authors}" if authors else "") + (f"\n{links}" if links else "")
        self._call(lambda: self.client.chat_postMessage(channel=self.config.channel,
                                                        text=text, unfurl_links=False))

    def _reply(self, response_url: str, text: str) -> None:
        try:
            # slack-sdk takes whole seconds: round up, never down to "no time at all".
            client = WebhookClient(response_url, timeout=math.ceil(self.config.request_timeout))
            answer = client.send(text=text, response_type="ephemeral", replace_original=False)
        except (urllib.error.URLError, OSError) as error:
            raise Retry(f"cannot reach Slack ({type(error).__name__})") from None
        if answer.status_code == 429:
            raise Retry("HTTP 429 (rate limited)",
                        retry_after(_header(answer.headers, "Retry-After")))
        if answer.status_code >= 500:
            raise Retry(f"HTTP {answer.status_code}")
        if answer.status_code != 200:
            raise SlackError(f"Slack refused the reply: HTTP {answer.status_code}")

    def _call(self, send: Callable[[], Any]) -> Any:
        """One Slack call; Retry for what may work later, SlackError for what will not."""
        try:
            return send()
        except SlackApiError as error:
            status = error.response.status_code
            reason = error.response.get("error") if isinstance(error.response.data,
                                                                dict) else None
            if status == 429:
                raise Retry("HTTP 429 (rate limited)",
                            retry_after(_header(error.response.headers, "Retry-After"))) from None
            if status >= 500:
                raise Retry(f"HTTP {status}") from None
            raise SlackError(f"Slack refused: {reason or f'HTTP {status}'}") from None
        except (urllib.error.URLError, OSError, SlackRequestError) as error:
            raise Retry(f"cannot reach Slack ({type(error).__name__})") from None


class SlackError(Exception):
    """Slack refused for a reason a retry will not fix; never carries the token."""


def loud(notice: Notice) -> bool:
    """Said to the whole channel: a breach (auto-rollback), a stall, a failed rollback."""
    if notice.kind in ("breach", "stall"):
        return True
    return notice.kind == "rollback" and notice.level == "page" and "failed" in notice.text


# --- the message ------------------------------------------------------------------------


def message(release: Release, gates: list[GateResult], lock: Lock | None, live: bool,
            notice: Notice, users: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """The release's message: fallback text and Block Kit blocks."""
    icon = _STATE_ICON.get(release.state, "•")
    head = (f"{icon} *{escape(release.name)}* · *{release.state}* · `{release.sha[:7]}`\n"
            f"{escape(notice.text)}")
    blocks: list[dict[str, Any]] = [_section(head), _section(commits_text(release, users))]
    blocks.append(_context(timeline(release)))
    if notice.details.get("log_tail"):
        blocks.append(_section(log_text(notice.details["log_tail"])))
    if gates:
        blocks.append(_section(gates_text(gates)))
    if notice.links:
        blocks.append(_context(link_list(notice.links)))
    if lock is not None:
        blocks.append(_context(f"🔒 {escape(lock.describe())}"))
    blocks.append(actions(release, lock, live))
    return f"{release.name} {release.state}: {notice.text}", blocks


def commits_text(release: Release, users: dict[str, str]) -> str:
    lines = []
    for commit in release.commits[:MAX_COMMITS_SHOWN]:
        title = commit.message.splitlines()[0] if commit.message else ""
        lines.append(f"• `{commit.sha[:7]}` {escape(title[:120])} — "
                     f"{escape(commit.author or 'unknown')}")
    hidden = len(release.commits) - MAX_COMMITS_SHOWN
    if hidden > 0:
        lines.append(f"…and {hidden} more")
    authors = sorted({c.author for c in release.commits if c.author})
    return (f"*{len(release.commits)} commit(s)* by {escape(', '.join(authors) or 'unknown')}\n"
            + "\n".join(lines))


def timeline(release: Release) -> str:
    stages = [(state, release.entered(state)) for state in _TIMELINE]
    stages = [(state, when) for state, when in stages if when is not None]
    if not stages:
        return "no stages yet"
    start = stages[0][1]
    return " → ".join(f"{state} {when:%H:%M:%S}" + (f" (+{_duration(when - start)})"
                                                    if when != start else "")
                      for state, when in stages) + " UTC"


def log_text(log_tail: str) -> str:
    """The last lines of a build's log as a code block (a section holds 3,000 characters;
    a ``` inside the log would end the block early)."""
    body = escape(log_tail.replace("```", "ˋˋˋ"))[-2900:]
    return f"*build log, last lines*\n```{body}```"


def gates_text(gates: list[GateResult]) -> str:
    lines = []
    for gate in gates:
        mark = "✅" if gate.passed else ("⚠️" if gate.errored else "❌")
        links = "".join(f" <{link.url}|{escape(link.title)}>" for link in gate.links)
        lines.append(f"{mark} *{escape(gate.gate)}* {escape(gate.summary[:300])}{links}")
    return "\n".join(lines)


def actions(release: Release, lock: Lock | None, live: bool) -> dict[str, Any]:
    value = json.dumps({"pipeline": release.pipeline, "release": release.number})
    buttons = []
    if live and release.state in SHIPPED:
        buttons.append({
            "type": "button", "action_id": ROLLBACK, "style": "danger", "value": value,
            "text": {"type": "plain_text", "text": "Roll back"},
            "confirm": {
                "title": {"type": "plain_text", "text": f"Roll back {release.name}?"},
                "text": {"type": "mrkdwn", "text": "No gates run, and the pipeline is "
                         "locked until someone unlocks it."},
                "confirm": {"type": "plain_text", "text": "Roll back"},
                "deny": {"type": "plain_text", "text": "Cancel"}}})
    if lock is None:
        buttons.append({"type": "button", "action_id": LOCK, "value": value,
                        "text": {"type": "plain_text", "text": "Lock"}})
    else:
        buttons.append({"type": "button", "action_id": UNLOCK, "value": value,
                        "style": "primary", "text": {"type": "plain_text", "text": "Unlock"}})
    return {"type": "actions", "block_id": f"ship_{release.id}", "elements": buttons}


def mentions(commits: tuple, users: dict[str, str]) -> str:
    authors = sorted({c.author for c in commits if c.author})
    return " ".join(f"<@{users[a]}>" if a in users else escape(a) for a in authors)


def escape(text: str) -> str:
    """Slack's mrkdwn needs &, < and > escaped; anything else is shown as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:3000]}]}


def _duration(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if key.lower() == name.lower():
            return value[0] if isinstance(value, list) else value
    return None


def link_list(links: tuple[Link, ...]) -> str:
    return " · ".join(f"<{link.url}|{escape(link.title)}>" for link in links)
