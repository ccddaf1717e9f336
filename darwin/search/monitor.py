"""What a person and a resumed run see of the search: the progress bars, ``history.jsonl``, ``fitness.png``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from darwin.search.plot import plot_history
from darwin.search.runfolder import append_jsonl


def _fmt(best: float | None) -> str:
    return "-" if best is None else f"{best:.5g}"


class RunMonitor:
    """:class:`darwin.search.loop.LoopEvents` of a run: each finished generation is appended to
    ``history.jsonl`` (fsynced) and drawn into ``fitness.png``; a rich bar counts candidates.

    Args:
        out: the run folder.
        baselines: name → fitness of each baseline (horizontal lines in the plot).
        counts: (population, generations of the whole run, generations already in the history).
        best: best fitness so far (None if none).
        progress: show the bar.
        plot: further keywords of :func:`darwin.search.plot.plot_history`: ``selection`` (name →
            selection score of each baseline, lines of the selection panel) and ``labels`` (role →
            what its fitness measures, under the panel titles).
    """

    def __init__(self, out: Path, baselines: dict[str, float | None], *, counts: tuple[int, int, int],
                 best: float | None, progress: bool, plot: dict[str, Any] | None = None):
        popsize, n_gen, done = counts
        self.out, self.baselines, self.plot = out, baselines, plot or {}
        self.bar = Progress(TextColumn("[bold]gen {task.fields[gen]}/{task.fields[n_gen]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("best {task.fields[best]}"), TimeRemainingColumn(),
                            TextColumn("[dim]{task.fields[last]}"), disable=not progress, transient=False)
        self.job = self.bar.add_task("evolve", total=n_gen * popsize, completed=done * popsize, gen=done,
                                     n_gen=n_gen, best=_fmt(best), last="")

    def __enter__(self) -> RunMonitor:
        self.bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.__exit__(exc_type, exc, tb)

    def candidate(self, generation: int, record: dict[str, Any] | None) -> None:
        """Advance the bar; shows the worker and seconds of the candidate, or ``infeasible``."""
        last = "infeasible" if record is None else f"{record['worker']} {record['seconds']:.1f}s"
        self.bar.update(self.job, advance=1, gen=generation + 1, last=last)

    def generation(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Append ``record`` to ``history.jsonl``, redraw ``fitness.png``, show the best so far."""
        append_jsonl(self.out / "history.jsonl", record)
        plot_history(history, self.baselines, self.out / "fitness.png", **self.plot)
        self.bar.update(self.job, best=_fmt(record["best_so_far"]))


@contextmanager
def counting(label: str, total: int, progress: bool) -> Iterator[Callable[[int, dict[str, Any]], None]]:
    """A rich bar for a batch of scored plans (baselines, the report): yields the evaluator's
    ``on_done(index, record)`` callback, which advances it."""
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not progress, transient=False)
    job = bar.add_task(label, total=total)
    with bar:
        yield lambda i, rec: bar.update(job, advance=1)
