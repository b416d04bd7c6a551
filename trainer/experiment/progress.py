"""A progress bar over an experiment's runs, and inside the current run its training steps and evaluation
tasks (`trainer experiment` in a terminal; logs and pipes get plain lines instead, `runner._progress`)."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class RunBar:
    """Two bars: runs done of the runs to do, and the current run's training steps (its note: the loss, then the
    evaluation task being scored). Lines printed through `line` appear above the bars."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[note]}"), console=console)
        self.all: TaskID | None = None
        self.current: TaskID | None = None

    def __enter__(self) -> "RunBar":
        self.progress.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.progress.stop()

    def line(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True)

    def runs(self, total: int) -> None:
        self.all = self.progress.add_task("runs", total=total, note="")

    def run(self, label: str, steps: int) -> None:
        """A run begins: `steps` training steps in all (0: scored untrained)."""
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(f"  {label}", total=steps or 1, note="")

    def step(self, done: int, loss: float) -> None:
        if self.current is not None:
            self.progress.update(self.current, completed=done, note=f"loss {loss:.4f}")

    def note(self, text: str) -> None:
        if self.current is not None:
            self.progress.update(self.current, note=text)

    def finished(self, text: str) -> None:
        """A run ended (`text` says how): one more run done, the line kept above the bars."""
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        if self.all is not None:
            self.progress.advance(self.all)
        self.line(text)
