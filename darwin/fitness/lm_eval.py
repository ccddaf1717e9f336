"""lm-eval fitness: lm-evaluation-harness tasks on the resident, in-memory model.

The model is wrapped by lm-eval's ``HFLM`` (no copy, no reload) and scored with
``lm_eval.evaluator.evaluate`` on tasks loaded **once**, at construction: from lm-eval's registry or
from local YAML files in ``include_path`` (``dataset_path: json`` + ``dataset_kwargs.data_files``),
which runs offline. Construction checks everything that can be checked without a model (task names,
``include_path``, the data files, metric names) and :meth:`LmEvalFitness.preflight` scores one item
per task, so a bad fitness fails before a run starts.

Relative ``data_files`` in a task YAML are resolved against **that YAML's folder** (lm-eval itself
would read them from the current directory), so a run works from any folder.

The score of a task:

* ``margin`` (``score: auto``, the default, uses it for multiple-choice tasks with no ``metric``
  named for them): per item, the
  log-likelihood of the gold choice minus that of the best distractor, ``ℓ_gold − max_{j≠gold} ℓ_j``
  in nats (ℓ as lm-eval computes it for ``acc``), averaged over items. Unlike accuracy it moves with
  every change of the model, so CMA-ES has a slope to follow; it is positive exactly where the item
  is answered right. Accuracy is still reported as lm-eval computes it.
* ``metric``: the task's metric (``metric``, or its first one), negated where lm-eval says lower is
  better; perplexity metrics (``word_perplexity``, ``byte_perplexity``…, ~1e54 on a weak model)
  enter as ``−ln(ppl)``, so a raw value cannot swamp the other terms of a weighted sum.

The fitness is the mean over tasks. Every metric lm-eval reports is kept in :attr:`last_metrics`
(``{"task/metric,filter": value}``), which ``darwin evolve`` writes to ``history.jsonl``.

Per item: :meth:`LmEvalFitness.doc_scores` returns one score per item (margins, or lm-eval's logged
per-item metric when it is a number whose mean is the task's score: ``acc``, ``exact_match``…),
for paired comparisons. Metrics aggregated otherwise (``bits_per_byte``, perplexities: a
(log-likelihood, size) pair per item) have none; it returns None and the caller uses the aggregate.

lm-eval's logging, warnings and progress bars go to :attr:`log_path` (``lm_eval.log`` in the run
folder), not to the console. Seeds are lm-eval's defaults (random 0, numpy / torch / few-shot 1234),
set around each evaluation and restored after it.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import random
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from darwin.errors import DarwinError

MULTIPLE_CHOICE = "multiple_choice"
RANDOM_SEED, OTHER_SEED = 0, 1234  # lm_eval.defaults: DEFAULT_RANDOM_SEED, DEFAULT_OTHER_SEED


def resolve_data_files(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``cfg`` with every relative path in ``dataset_kwargs.data_files`` (a path, a list, or a
    ``{split: path | list}`` mapping) made absolute against ``folder``; other keys unchanged."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return cfg

    def fix(p: Any) -> Any:
        if isinstance(p, list):
            return [fix(x) for x in p]
        if isinstance(p, str) and "://" not in p and not os.path.isabs(p):
            return str(folder / p)
        return p

    fixed = {k: fix(v) for k, v in files.items()} if isinstance(files, dict) else fix(files)
    return {**cfg, "dataset_kwargs": {**cfg["dataset_kwargs"], "data_files": fixed}}


def choice_margin(lls: list[float], golds: list[int]) -> float:
    """``max ℓ_gold − max ℓ_distractor`` for one multiple-choice item (nats); 0.0 without distractors.

    Args:
        lls: log-likelihood of each choice (lm-eval's ``resps``), in choice order.
        golds: indices of the correct choices.
    """
    others = [v for j, v in enumerate(lls) if j not in golds]
    return max(lls[g] for g in golds) - max(others) if others else 0.0


def metric_value(name: str, value: float, higher_is_better: bool) -> float:
    """A reported metric as a higher-is-better fitness term (see the module doc: perplexities on a
    log scale, lower-is-better metrics negated)."""
    if "perplexity" in name:
        return -math.log(value) if value > 0 else float("nan")
    return value if higher_is_better else -value


class _Sink(logging.Handler):
    """Appends lm-eval's log records to ``path``; until it is set and its folder exists, keeps the
    last ``KEEP`` of them in memory."""

    KEEP = 2000

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.path: Path | None = None
        self.pending: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.pending = self.pending[-self.KEEP + 1:] + [self.format(record)]
        if self.path is not None and self.path.parent.is_dir():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(self.pending) + "\n")
            self.pending.clear()


_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


def _silent_tqdm(*args: Any, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def _quiet(sink: _Sink) -> Iterator[None]:
    """lm-eval's loggers into ``sink`` and its progress bars off for the duration: lm-eval creates
    some bars with no ``disable`` switch, so the ``tqdm`` name of its modules is swapped for a
    disabled one and restored on exit (the loggers and ``datasets``' bars too). Python warnings are dropped meanwhile."""
    import importlib
    import warnings

    names = ("lm_eval", "lm-eval", "datasets", "accelerate")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    mods = [importlib.import_module(m) for m in _TQDM_MODULES]
    bars = [getattr(m, "tqdm", None) for m in mods]
    import datasets.utils.logging as ds_logging

    ds_bars_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        for lg in loggers:
            lg.handlers, lg.propagate = [sink], False
            lg.setLevel(logging.INFO)
        for m, bar in zip(mods, bars):
            if bar is not None:
                m.tqdm = _silent_tqdm  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, (handlers, prop, level) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, prop
            lg.setLevel(level)
        for m, bar in zip(mods, bars):
            if bar is not None:
                m.tqdm = bar  # type: ignore[attr-defined]
        if ds_bars_on:
            ds_logging.enable_progress_bar()


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """lm-eval's default seeds for one evaluation; the caller's random states restored after."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(RANDOM_SEED)
    np.random.seed(OTHER_SEED)
    torch.manual_seed(OTHER_SEED)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class LmEvalFitness:
    """Mean lm-eval score over ``tasks`` (see the module doc).

    Args:
        tasks: task (or group) names, from lm-eval's registry or ``include_path``.
        include_path: folder of local task YAMLs.
        limit: items per task: an int ≥ 1 (a fixed prefix, so scores are deterministic) or a
            fraction in (0, 1) of each task's items.
        metric: one metric name for all tasks, or ``{task: metric}``; default: each task's first.
        batch_size: lm-eval batch size, or ``"auto"``.
        score: ``auto``, ``margin`` or ``metric`` (module doc).
        num_fewshot, apply_chat_template, fewshot_as_multiturn, system_instruction, gen_kwargs:
            lm-eval's options of the same names (``fewshot_as_multiturn`` None: on exactly when a
            chat template is applied, as the ``lm_eval`` CLI).

    Raises:
        DarwinError: lm-eval is not installed; ``include_path`` is missing; a task is unknown
            (naming close matches); a task's data cannot be loaded (naming the task and file); a
            metric is not one the task reports; ``score: margin`` on a task that is not multiple choice.
    """

    def __init__(self, tasks: list[str], include_path: str | os.PathLike | None = None,
                 limit: float | None = None, metric: str | dict[str, str] | None = None,
                 batch_size: int | str = 4, *, score: str = "auto", num_fewshot: int | None = None,
                 apply_chat_template: bool | str = False, fewshot_as_multiturn: bool | None = None,
                 system_instruction: str | None = None, gen_kwargs: dict[str, Any] | None = None):
        try:
            import lm_eval  # noqa: F401
        except ImportError as e:
            raise DarwinError("lm_eval fitness needs lm-eval: pip install 'darwin-merge[lm_eval]'") from e
        self.tasks, self.batch_size, self.score = list(tasks), batch_size, score
        self.limit = None if limit is None else (limit if limit < 1 else int(limit))
        self.metrics = {t: metric.get(t) if isinstance(metric, dict) else metric for t in self.tasks}
        self.include_path = str(include_path) if include_path else None
        multiturn = bool(apply_chat_template) if fewshot_as_multiturn is None else fewshot_as_multiturn
        self.options: dict[str, Any] = {"num_fewshot": num_fewshot, "apply_chat_template": apply_chat_template,
                                        "fewshot_as_multiturn": multiturn, "system_instruction": system_instruction,
                                        "gen_kwargs": gen_kwargs}
        self.last_results: dict[str, Any] | None = None
        self.last_samples: dict[str, list[dict[str, Any]]] | None = None  # lm-eval's logged items, last call
        self.last_metrics: dict[str, float] = {}
        self._pending: float | None = None
        self._sink = _Sink()
        with _quiet(self._sink):
            self._loaded = self._load()
        self._check_metrics()

    # ---------------------------------------------------------------- loading and checks
    @property
    def log_path(self) -> Path | None:
        """Where lm-eval's output goes (None: kept in memory until set)."""
        return self._sink.path

    @log_path.setter
    def log_path(self, path: str | os.PathLike | None) -> None:
        self._sink.path = Path(path) if path is not None else None

    def __getstate__(self) -> dict[str, Any]:  # Ray actors get a copy: tasks are loaded again there
        return {**{k: v for k, v in self.__dict__.items() if k not in ("_loaded", "_sink")},
                "_log": self.log_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        log = state.pop("_log")
        self.__dict__.update(state)
        self._sink = _Sink()
        self.log_path = log
        with _quiet(self._sink):
            self._loaded = self._load()

    def _manager(self):
        """lm-eval's TaskManager: ``include_path`` alone when it holds every task (indexing the
        registry takes seconds), else the registry too."""
        from lm_eval.tasks import TaskManager

        if self.include_path is None:
            return TaskManager()
        if not Path(self.include_path).is_dir():
            raise DarwinError(f"lm_eval fitness: include_path {self.include_path}: no such folder")
        local = TaskManager(include_path=self.include_path, include_defaults=False)
        if all(t in local.task_index for t in self.tasks):
            return local
        return TaskManager(include_path=self.include_path)

    def _spec(self, tm, name: str) -> str | dict[str, Any]:
        """The task's name, or its full config with data files resolved beside its YAML."""
        from lm_eval.tasks._yaml_loader import load_yaml

        entry = tm.task_index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            where = f" in {self.include_path} or lm-eval's registry" if self.include_path else " in lm-eval's registry"
            raise DarwinError(f"lm_eval fitness: no task {name!r}{where}"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
        if getattr(entry, "yaml_path", None) is None or getattr(entry.kind, "name", "") != "TASK":
            return name
        cfg = load_yaml(entry.yaml_path, resolve_func=True)
        fixed = resolve_data_files(cfg, Path(entry.yaml_path).parent)
        return {**fixed, "task": name} if fixed is not cfg else name

    def _load(self) -> dict[str, Any]:
        tm = self._manager()
        specs = [self._spec(tm, t) for t in self.tasks]
        loaded: dict[str, Any] | None = None
        for name, spec in zip(self.tasks, specs):  # one at a time, so an error names its task
            try:
                one = tm.load([spec])
            except Exception as e:  # lm-eval and datasets raise many kinds; all mean "this task cannot load"
                raise DarwinError(f"lm_eval fitness: task {name!r} cannot be loaded: {type(e).__name__}: {e}") from e
            if loaded is None:
                loaded = one
            else:
                for key, val in one.items():
                    if isinstance(val, dict):
                        loaded[key].update(val)
        assert loaded is not None  # tasks is non-empty
        for task_obj in loaded["tasks"].values():
            self._configure(task_obj)
        return loaded

    def _configure(self, task_obj: Any) -> None:
        """num_fewshot and gen_kwargs on one task, as ``lm_eval.simple_evaluate`` sets them."""
        gen, shots = self.options["gen_kwargs"], self.options["num_fewshot"]
        if gen and task_obj.get_config("output_type") == "generate_until":
            task_obj.set_config(key="generation_kwargs", value=dict(gen), update=True)
        if shots is not None and task_obj.get_config("num_fewshot") != 0:
            task_obj.set_config(key="num_fewshot", value=shots)
        elif task_obj.get_config("num_fewshot") is None:
            task_obj.set_config(key="num_fewshot", value=0)

    def _leaf(self, name: str) -> Any | None:
        """The loaded Task of a configured name (None for a group or tag)."""
        return self._loaded["tasks"].get(name)

    def _check_metrics(self) -> None:
        for name in self.tasks:
            task = self._leaf(name)
            if task is None:
                continue  # groups report their own aggregates; checked by preflight
            have = sorted(task.aggregation())
            want = self.metrics[name]
            if want is not None and want.split(",")[0] not in have:
                raise DarwinError(f"lm_eval fitness: task {name!r} has no metric {want!r}; it reports {have}")
            if self.score == "margin" and task.get_config("output_type") != MULTIPLE_CHOICE:
                raise DarwinError(f"lm_eval fitness: score: margin needs a multiple-choice task; {name!r} is "
                                  f"{task.get_config('output_type')}")

    def scoring(self, name: str) -> str:
        """``margin`` or ``metric``: how task ``name`` is scored."""
        task = self._leaf(name)
        mc = task is not None and task.get_config("output_type") == MULTIPLE_CHOICE
        auto_margin = self.score == "auto" and mc and self.metrics[name] is None
        return "margin" if (self.score == "margin" or auto_margin) else "metric"

    def label(self) -> str:
        """A short description for tables and plots: tasks, how each is scored, the limit."""
        parts = [f"{t} ({self.scoring(t) if self.scoring(t) == 'margin' else self.metrics[t] or 'first metric'})"
                 for t in self.tasks]
        return "lm_eval " + ", ".join(parts) + (f", limit {self.limit}" if self.limit is not None else "")

    def preflight(self, model: Any, tokenizer: Any) -> None:
        """Score one item of every task on ``model`` (parent A, before the run).

        Raises:
            DarwinError: naming the task, when evaluation fails or yields no usable score.
        """
        try:
            self._evaluate(model, tokenizer, limit=1)
        except DarwinError:
            raise
        except Exception as e:  # the run must not start on a fitness that cannot score
            raise DarwinError(f"lm_eval fitness {self.tasks}: scoring one item on parent A failed: "
                              f"{type(e).__name__}: {e}") from e

    # ---------------------------------------------------------------- scoring
    def _run(self, model: Any, tokenizer: Any, limit: float | None) -> dict[str, Any]:
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        with _quiet(self._sink), _seeded():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            for task_obj in self._loaded["tasks"].values():
                task_obj.set_fewshot_seed(seed=OTHER_SEED)
            o = self.options
            try:
                res = evaluate(lm=lm, task_dict=self._loaded, limit=limit, bootstrap_iters=0, log_samples=True,
                               system_instruction=o["system_instruction"],
                               apply_chat_template=o["apply_chat_template"],
                               fewshot_as_multiturn=o["fewshot_as_multiturn"])
            except AssertionError as e:  # lm-eval's internal checks carry no message: name the check
                where = traceback.extract_tb(e.__traceback__)[-1]
                raise DarwinError(f"lm_eval fitness {self.tasks}: lm-eval's check failed at "
                                  f"{Path(where.filename).name}:{where.lineno}: {where.line}") from e
        if res is None:
            raise DarwinError(f"lm_eval fitness {self.tasks}: lm-eval returned no results")
        return res

    def _task_score(self, res: dict[str, Any], name: str) -> tuple[float, list[float] | None]:
        """(score, per-item scores or None) of one configured task."""
        r = res["results"].get(name)
        if r is None:
            raise DarwinError(f"lm_eval fitness: task {name!r} produced no results")
        samples = (res.get("samples") or {}).get(name, [])
        if self.scoring(name) == "margin":
            items = [self._margin(name, smp) for smp in samples]
            if not items:
                raise DarwinError(f"lm_eval fitness: task {name!r} scored no items")
            return math.fsum(items) / len(items), items
        want = self.metrics[name]
        numeric = [k for k in r if "," in k and not k.split(",")[0].endswith("_stderr")
                   and isinstance(r[k], (int, float)) and not isinstance(r[k], bool)]
        key = next((k for k in numeric if k.split(",")[0] == want.split(",")[0]), None) if want else \
            (numeric[0] if numeric else None)
        if key is None:
            raise DarwinError(f"lm_eval fitness: task {name!r} has no metric {want or '(any)'}; got {sorted(r)}")
        metric = key.split(",")[0]
        hib = res.get("higher_is_better", {}).get(name, {}).get(metric, True)
        value = metric_value(metric, float(r[key]), hib)
        vals = [smp.get(metric) for smp in samples]
        per_item = vals and "perplexity" not in metric and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        return value, ([metric_value(metric, float(v), hib) for v in vals] if per_item else None)

    def _margin(self, name: str, sample: dict[str, Any]) -> float:
        task = self._leaf(name)
        assert task is not None  # margin scoring is only chosen for a loaded multiple-choice task
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        choices = task.doc_to_choice(sample["doc"])
        lls = lls[: len(choices)]  # acc_mutual_info adds unconditional requests after the choices
        target = sample["target"]
        golds = target if isinstance(target, list) else [target]
        golds = [choices.index(g) if isinstance(g, str) and g in choices else int(g) for g in golds]
        return choice_margin(lls, golds)

    def _evaluate(self, model: Any, tokenizer: Any, limit: float | None = None
                  ) -> tuple[float, list[float] | None]:
        res = self._run(model, tokenizer, self.limit if limit is None else limit)
        self.last_results, self.last_samples = res["results"], res.get("samples")
        self.last_metrics = {f"{task}/{k}": float(v) for task, r in res["results"].items() for k, v in r.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool) and "," in k
                             and not k.split(",")[0].endswith("_stderr")}
        per_task = [self._task_score(res, name) for name in self.tasks]
        out = math.fsum(s for s, _ in per_task) / len(per_task)
        items = None
        if all(v is not None for _, v in per_task):  # task t weighs 1/T: item i of n_t gives v·N/(T·n_t)
            lists = [v for _, v in per_task if v is not None]
            n = sum(len(v) for v in lists)
            items = [x * n / (len(lists) * len(v)) for v in lists for x in v]
        return (out if math.isfinite(out) else float("nan")), items

    def __call__(self, model: Any, tokenizer: Any) -> float:
        pending, self._pending = self._pending, None
        return pending if pending is not None else self._evaluate(model, tokenizer)[0]

    def doc_scores(self, model: Any, tokenizer: Any) -> list[float] | None:
        """Per-item scores (see the module doc), or None where the metric has none; the aggregate of
        this evaluation is kept for the next call of the fitness itself, so it is not run twice."""
        total, items = self._evaluate(model, tokenizer)
        self._pending = total if items is None else None
        return items
