"""The search: ``parents.yaml``, CMA-ES over a genome, candidates merged into a resident model and scored.

Modules, in the order a run uses them: :mod:`~darwin.search.config` (parents.yaml),
:mod:`~darwin.search.evolve` (the steps in order), :mod:`~darwin.search.context` (the run's plain
data), :mod:`~darwin.search.runfolder` (run.json, history.jsonl, atomic writes),
:mod:`~darwin.search.priors` (MRI priors), :mod:`~darwin.search.scoring` (fitness from config),
:mod:`~darwin.search.cmaes` (the CMA-ES adapter), :mod:`~darwin.search.loop` (the generation loop),
:mod:`~darwin.search.constraints` (budgets), :mod:`~darwin.search.evaluator` /
:mod:`~darwin.search.ray_pool` / :mod:`~darwin.search.resident` (where candidates are scored),
:mod:`~darwin.search.monitor` / :mod:`~darwin.search.plot` (progress, fitness.png),
:mod:`~darwin.search.outputs` (the child and its files), :mod:`~darwin.search.golf` (model golf runs).
"""

from darwin.search.config import ParentsConfig, load_parents_config
from darwin.search.evolve import EvolveOptions, EvolveResult

__all__ = ["ParentsConfig", "load_parents_config", "EvolveOptions", "EvolveResult"]
