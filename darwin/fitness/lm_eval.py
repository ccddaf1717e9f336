"""lm-eval fitness: run lm-evaluation-harness tasks on the resident, in-memory model.

The model is wrapped by lm-eval's ``HFLM`` (no copy, no reload) and evaluated with
``lm_eval.simple_evaluate``; tasks may come from lm-eval's registry or from local YAML files in
``include_path`` pointing at local data files (``dataset_path: json`` + ``dataset_kwargs.data_files``),
which runs offline. The score is the mean over tasks of each task's metric (``metric`` or the
first reported one), negated where lm-eval says lower is better.

Per item: :meth:`LmEvalFitness.doc_scores` returns one score per evaluated item (lm-eval's logged
samples) when the metric is a per-item number whose mean is the task's score (``acc``,
``exact_match``…), for paired comparisons; for metrics aggregated otherwise (``bits_per_byte``,
``word_perplexity``: a (log-likelihood, size) pair per item) it returns None and the caller uses the
aggregate.
"""

from __future__ import annotations

import math
import os
from typing import Any

from darwin.errors import DarwinError


class LmEvalFitness:
    """Mean lm-eval metric over ``tasks``.

    Args:
        tasks: task names.
        include_path: folder of local task YAMLs.
        limit: items per task (a fixed prefix, so scores are deterministic).
        metric: metric name (e.g. ``acc``); default: the first metric each task reports.
        batch_size: lm-eval batch size.
    """

    def __init__(self, tasks: list[str], include_path: str | os.PathLike | None = None, limit: int | None = None,
                 metric: str | None = None, batch_size: int = 4):
        try:
            import lm_eval  # noqa: F401
        except ImportError as e:
            raise DarwinError("lm_eval fitness needs lm-eval: pip install 'darwin-merge[lm_eval]'") from e
        self.tasks, self.limit, self.metric, self.batch_size = list(tasks), limit, metric, batch_size
        self.include_path = str(include_path) if include_path else None
        self._manager = None
        self.last_results: dict[str, Any] | None = None
        self._pending: float | None = None

    def _task_manager(self):
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            self._manager = TaskManager(include_path=self.include_path) if self.include_path else TaskManager()
        return self._manager

    def _evaluate(self, model, tokenizer, log_samples: bool) -> tuple[float, list[float] | None]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
        res = simple_evaluate(model=lm, tasks=self.tasks, limit=self.limit, task_manager=self._task_manager(),
                              log_samples=log_samples, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=0, bootstrap_iters=0, verbosity="ERROR")
        self.last_results = res["results"]
        scores: list[float] = []
        per_task: list[list[float]] | None = [] if log_samples else None
        for task in self.tasks:
            r = res["results"].get(task)
            if r is None:
                raise DarwinError(f"lm_eval fitness: task {task!r} produced no results")
            hib = res.get("higher_is_better", {}).get(task, {})
            key = next((k for k in r if self.metric and k.split(",")[0] == self.metric), None) if self.metric else \
                next((k for k in r if "," in k and not k.split(",")[0].endswith("_stderr")
                      and isinstance(r[k], (int, float))), None)
            if key is None:
                raise DarwinError(f"lm_eval fitness: task {task!r} has no metric {self.metric or '(any)'}; "
                                  f"got {sorted(r)}")
            sign = 1.0 if hib.get(key.split(",")[0], True) else -1.0
            scores.append(sign * float(r[key]))
            if per_task is not None:
                vals = [smp.get(key.split(",")[0]) for smp in (res.get("samples") or {}).get(task, [])]
                if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                    per_task = None  # not a per-item mean (e.g. bits_per_byte's (log-likelihood, bytes) pairs)
                else:
                    per_task.append([sign * float(v) for v in vals])
        out = sum(scores) / len(scores)
        items = None
        if per_task is not None:  # task t weighs 1/T: item i of its n_t contributes v·N/(T·n_t), mean = score
            n = sum(len(v) for v in per_task)
            items = [v * n / (len(per_task) * len(vals)) for vals in per_task for v in vals]
        return (out if math.isfinite(out) else float("nan")), items

    def __call__(self, model, tokenizer) -> float:
        pending, self._pending = self._pending, None
        return pending if pending is not None else self._evaluate(model, tokenizer, False)[0]

    def doc_scores(self, model, tokenizer) -> list[float] | None:
        """Per-item scores (see the module doc), or None where the metric has none; the aggregate of
        this evaluation is kept for the next call of the fitness itself, so it is not run twice."""
        total, items = self._evaluate(model, tokenizer, True)
        self._pending = total if items is None else None
        return items
