"""The CMA-ES adapter: pycma's ask/tell with a protected random stream, losses, replay.

CMA-ES (Hansen & Ostermeier 2001; pycma, Hansen et al., arXiv 1604.00772) minimises, so a
candidate's loss is ``−fitness``; a failed candidate gets :data:`FAILED_LOSS` and one that violates a
constraint ``INFEASIBLE_LOSS·(1 + violation)``: below every feasible candidate, above every failed
one (CMA-ES is rank-based, so only the order matters).

The numpy random stream that pycma draws from is saved and restored around every ``ask``/``tell``
so that fitness code using numpy cannot perturb it: replaying ``history.jsonl`` through ask/tell
with the same seed rebuilds the exact optimiser state (no pickles), and a resumed run ends with the
same result as an unbroken one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from darwin.errors import DarwinError

FAILED_LOSS = 1e30
INFEASIBLE_LOSS = 1e20


def candidate_loss(cand: dict[str, Any]) -> float:
    """The loss CMA-ES ranks a candidate record by (see module doc)."""
    if cand["fitness"] is not None:
        return -cand["fitness"]
    if cand.get("violation"):
        return INFEASIBLE_LOSS * (1 + cand["violation"])
    return FAILED_LOSS


class CmaSearch:
    """pycma's ``CMAEvolutionStrategy`` with its own numpy random stream.

    Args:
        x0: start point (search coordinates, one per gene).
        sigma0: initial step size.
        popsize: candidates per generation.
        seed: run seed (pycma gets ``seed + 1``; 0 would mean "random" to pycma).
        pull: weight of the penalty ``pull · mean((x − x0)²)`` added to every scored candidate's
            loss (a pull toward the start; 0: none).
    """

    def __init__(self, x0: list[float], sigma0: float, popsize: int, seed: int, pull: float = 0.0):
        import cma

        self.x0, self.pull = np.asarray(x0, dtype=float), float(pull)
        saved = np.random.get_state()
        self.es = cma.CMAEvolutionStrategy(x0, sigma0, {"popsize": popsize, "seed": seed + 1, "verbose": -9,
                                                        "tolfun": 0, "tolx": 0, "tolfunhist": 0,
                                                        "tolstagnation": 10**9, "tolflatfitness": 10**9})
        self.rng = np.random.get_state()
        np.random.set_state(saved)

    @property
    def sigma(self) -> float:
        """The current overall step size."""
        return float(self.es.sigma)

    def ask(self) -> list[list[float]]:
        """The next generation's candidates."""
        saved = np.random.get_state()
        np.random.set_state(self.rng)
        xs = self.es.ask()
        self.rng = np.random.get_state()
        np.random.set_state(saved)
        return [list(map(float, x)) for x in xs]

    def tell(self, xs: list[list[float]], cands: list[dict[str, Any]]) -> None:
        """Update the distribution with the generation's candidate records (in ``xs`` order)."""
        saved = np.random.get_state()
        np.random.set_state(self.rng)
        self.es.tell([np.asarray(x) for x in xs], [self.loss(x, c) for x, c in zip(xs, cands)])
        self.rng = np.random.get_state()
        np.random.set_state(saved)

    def loss(self, x: list[float], cand: dict[str, Any]) -> float:
        """:func:`candidate_loss` plus the pull toward the start for a scored candidate."""
        loss = candidate_loss(cand)
        if self.pull and cand["fitness"] is not None:
            loss += self.pull * float(np.mean((np.asarray(x, dtype=float) - self.x0) ** 2))
        return loss

    def replay(self, history: list[dict[str, Any]], source: Path) -> None:
        """Rebuild the state after ``history`` (records of ``source``) by asking and telling again.

        Raises:
            DarwinError: a generation's stored candidates are not the ones this seed and
                configuration ask for.
        """
        for rec in history:
            xs = self.ask()
            stored = [c["x"] for c in rec["candidates"]]
            if len(xs) != len(stored) or not np.allclose(xs, stored, rtol=0, atol=1e-12):
                raise DarwinError(f"{source}: generation {rec['generation']} does not replay with this seed "
                                  "and configuration")
            self.tell(stored, rec["candidates"])
