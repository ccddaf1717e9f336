"""Distributed candidate evaluation on Ray (optional extra: ``pip install darwin-merge[ray]``).

One Ray actor per worker holds the parents and a resident model (loaded once per actor, never per
candidate); the driver sends merge plans decoded from genomes and receives fitness records (see
:mod:`darwin.search.evaluator`). Each actor takes one GPU when the cluster has them (``device`` not
``cpu``), else an equal share of the CPUs, and sets torch's thread count to that share.

Faults: when an actor dies mid-candidate (killed, crashed, out of memory, node lost) its candidate
goes back to the front of the queue, is scored by the other actors, and a replacement actor is
started (at most ``2 × workers`` replacements per run). A candidate that killed two workers is
recorded as failed (fitness None, scored worst) rather than retried forever. An exception or a
non-finite fitness inside an actor is an ordinary failed candidate, as in the serial path.

Results equal the serial evaluator's for the same seed whenever the fitness is bitwise
deterministic across processes (the plans are identical; history is kept in candidate order, not
completion order). Reductions whose order depends on the thread count can change the last bits of
a fitness at large scale; see ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any

from darwin.errors import DarwinError
from darwin.plan.plan import MergePlan
from darwin.search.evaluator import OnDone, evaluate_plan, role_fitness
from darwin.search.resident import ResidentModel, ResidentSpec

log = logging.getLogger("darwin.ray")
MAX_ATTEMPTS = 2  # a candidate that kills this many workers is recorded as failed


def require_ray():
    """The ``ray`` module.

    Raises:
        DarwinError: Ray is not installed (with the install command).
    """
    try:
        import ray
    except ImportError:
        raise DarwinError("search.workers > 1 and --address need Ray: pip install 'darwin-merge[ray]'") from None
    return ray


class _Worker:
    """Ray actor body: the parents and one resident model, scoring plans sent by the driver."""

    def __init__(self, spec: ResidentSpec, fitness, name: str, device: str, threads: int):
        import socket

        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per actor start-up would interleave on the driver
        torch.set_num_threads(max(1, threads))
        self.label = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.resident = spec.build(device)
        self.fitness = fitness

    def ready(self) -> str:
        """This worker's label (``w0@host:pid``) once the parents are loaded."""
        return self.label

    def score(self, plan: MergePlan, role: str = "fitness") -> dict[str, Any]:
        """One candidate's fitness record for ``role``."""
        return evaluate_plan(self.resident, plan, role_fitness(self.fitness, role), self.label)


class RayEvaluator:
    """A pool of Ray actors scoring candidates in parallel.

    Args:
        spec: what each actor's resident model is built from (folders must be readable at the same
            paths on every node: a shared filesystem, or hub ids cached on each node).
        fitness: ``(model, tokenizer) -> Score``; sent to the actors with cloudpickle.
        workers: number of actors (≥ 1).
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None
            starts a local Ray instance on loopback with this machine's CPUs and GPUs.

    Raises:
        DarwinError: Ray not installed, the cluster lacks the requested GPUs, the fitness cannot
            be sent to the workers, or an actor fails to load the parents (with its error).
    """

    def __init__(self, spec: ResidentSpec, fitness, workers: int, address: str | None = None):
        ray = require_ray()
        if workers < 1:
            raise DarwinError(f"search.workers must be >= 1, got {workers}")
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                if address:
                    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
                else:
                    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=os.cpu_count(),
                             include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise DarwinError(f"Ray: cannot {'join ' + address if address else 'start a local instance'} "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        self.spec, self.workers = spec, workers
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        if spec.device.startswith("cuda") and gpus < 1:
            raise DarwinError(f"device {spec.device!r} but the Ray cluster has no GPU")
        self.gpu = spec.device != "cpu" and gpus >= 1
        self.device = "cuda" if self.gpu else "cpu"
        self.threads = max(1, cpus // workers)
        # CPU share per actor: fractional when there are more workers than CPUs, so every actor can be
        # placed (with a whole CPU each, actors beyond the CPU count would wait forever)
        self.cpu_share = cpus / workers if cpus < workers else float(self.threads)
        try:
            self._fitness_ref = ray.put(fitness)
        except Exception as e:
            self.close()
            raise DarwinError(f"the fitness cannot be sent to Ray workers ({type(e).__name__}: {e}); "
                              "use a module-level function or a python fitness entry") from e
        self._restarts_left = 2 * workers
        self._serial = 0
        self.actors = [self._start(f"w{i}") for i in range(workers)]
        try:
            self.labels = ray.get([a.ready.remote() for a in self.actors])
        except ray.exceptions.RayError as e:
            self.close()
            raise DarwinError(f"a Ray worker could not load the parents: {e}") from e

    def _start(self, name: str):
        opts: dict[str, Any] = {"num_cpus": 0 if self.gpu else self.cpu_share, "num_gpus": 1 if self.gpu else 0,
                                "max_restarts": 0}
        actor_cls = self._ray.remote(**opts)(_Worker)
        return actor_cls.remote(self.spec, self._fitness_ref, name, self.device, self.threads)

    def resident(self) -> ResidentModel:
        """A resident model in the driver process (built here; the actors' stay remote)."""
        return self.spec.build()

    def run(self, plans: list[MergePlan], on_done: OnDone | None = None, role: str = "fitness"
            ) -> list[dict[str, Any]]:
        """Score ``plans`` on the actors with the ``role``'s fitness; records come back in plan order.

        Raises:
            DarwinError: every worker died and no replacement could be started.
        """
        ray = self._ray
        results: list[dict[str, Any] | None] = [None] * len(plans)
        attempts = [0] * len(plans)
        queue = deque(range(len(plans)))
        idle = list(range(len(self.actors)))
        inflight: dict[Any, tuple[int, int]] = {}
        while queue or inflight:
            while queue and idle:
                slot, i = idle.pop(0), queue.popleft()
                inflight[self.actors[slot].score.remote(plans[i], role)] = (i, slot)
            if not inflight:
                raise DarwinError("every Ray worker died; no candidates can be scored")
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            i, slot = inflight.pop(ref)
            try:
                rec = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # not raised by the fitness (caught there): a transport error
                rec = {"fitness": None, "components": {}, "error": f"RayTaskError: {e}", "seconds": 0.0,
                       "worker": self.labels[slot]}
            except ray.exceptions.RayError as e:  # the actor died: re-queue, replace it
                attempts[i] += 1
                log.warning("Ray worker %s died while scoring candidate %d (%s); re-queued",
                            self.labels[slot], i, type(e).__name__)
                if attempts[i] >= MAX_ATTEMPTS:
                    rec = {"fitness": None, "components": {}, "seconds": 0.0, "worker": self.labels[slot],
                           "error": f"WorkerDied: {MAX_ATTEMPTS} workers died while scoring this candidate "
                                    f"(out of memory?); last: {type(e).__name__}"}
                else:
                    queue.appendleft(i)
                    rec = None
                self._replace(slot, idle)
                if rec is None:
                    continue
            else:
                idle.append(slot)
            results[i] = rec
            if on_done is not None:
                on_done(i, rec)
        return results  # type: ignore[return-value]

    def _replace(self, slot: int, idle: list[int]) -> None:
        if self._restarts_left <= 0:
            log.warning("no replacement for Ray worker %s (restart budget spent)", self.labels[slot])
            return
        self._restarts_left -= 1
        self._serial += 1
        name = f"w{slot}.{self._serial}"
        self.actors[slot] = self._start(name)
        self.labels[slot] = name  # refined once it reports ready; calls queue behind its start-up
        idle.append(slot)

    def close(self) -> None:
        """Kill the actors; shut Ray down if this evaluator started it."""
        for a in getattr(self, "actors", []):
            try:
                self._ray.kill(a)
            except Exception:  # already dead
                pass
        self.actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
