"""What is wrong with a pipelines file, located by file, line and field path; and a pipeline
name that is not in it. Apart from orchestrator.config so that a command which never reads
the file (a rollback handed to a running `ship serve`) need not import pydantic and every
provider to name these errors."""

from __future__ import annotations

from dataclasses import dataclass


class UnknownPipeline(LookupError):
    pass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        where += f":{self.column}" if self.line and self.column else ""
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        # Keys and values come from the file: never let them move the cursor or end the line.
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in text)


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems

