"""The console notifier: notices as rich lines, pages in red."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from orchestrator.notify import Notice

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
        style = _STYLE[notice.level]
        text = escape(notice.text)
        if notice.level == "page":
            text = f"PAGE on-call: {text}"
        self.console.print(f"[dim]{notice.pipeline:>4}[/] {icon} [{style}]{text}[/]",
                           highlight=False, markup=True)
