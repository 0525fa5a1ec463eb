"""The console notifier: notices as rich lines, pages in red."""

from __future__ import annotations

from rich.console import Console

from orchestrator.notify import Notice
from orchestrator.show import line

_STYLE = {"info": "cyan", "warning": "yellow", "page": "bold white on red"}
_ICON = {"live": "🚀", "halted": "⛔", "breach": "💔", "rollback": "⏪", "lock": "🔒",
         "unlock": "🔓", "stall": "📟", "stall_resolved": "✅", "refused": "✋",
         "no_data": "❔", "watch_ok": "💚", "stage": "•"}


class ConsoleNotifier:
    name = "console"

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    def notify(self, notice: Notice) -> None:
        icon = _ICON.get(notice.kind, "•")
        page = "PAGE on-call: " if notice.level == "page" else ""
        # The notice's text comes from data (reasons, commit messages): never markup.
        self.console.print(line((f"{notice.pipeline:>4}", "dim"), f" {icon} ",
                                (page + notice.text, _STYLE[notice.level])), highlight=False)
