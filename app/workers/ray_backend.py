"""The Ray worker backend: a pool of actors on a Ray cluster, each holding loaded encoders.

- **Placement.** Each actor asks ``num_gpus=1`` when the cluster has GPUs, else
  ``num_cpus=cpus_per_actor`` (torch in the actor uses that many threads). On GPU the encoder
  batch size is sized to the device memory; on CPU the encoder's own default is used, so the
  embeddings are those of the local backend.
- **Routing.** One job (embed one dataset with one encoder, or train one ESM) runs as one actor
  call; the actor is the least busy one, preferring an actor that already holds the encoder
  (each actor keeps a bounded LRU of loaded encoders). A models ranking submits one job per
  candidate encoder, so candidates run in parallel on different actors / GPUs.
- **Progress.** Actors report progress to a small progress actor; a coordinator thread in the
  API process polls it and calls the job's ``progress`` callback.
- **Fault handling.** Actors have ``max_restarts`` / ``max_task_retries``: if a worker process
  dies mid-job, Ray restarts the actor and re-runs the call (jobs are pure functions of their
  inputs), so the job completes with the same result; when the retries are used up, the job's
  Future fails with the reason. An error raised *inside* a call (an encoder that cannot load,
  bad input) is not retried and fails that job only: the actor keeps serving others.
- **No credentials.** Actors return numpy arrays; the service stores them.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from app.encoders.base import EncoderSpec
from app.workers.base import Cancelled, EsmTrainRequest, ProgressFn, WorkerBackend
from app.workers.local import EncoderCache, _safe_progress, embed_texts

log = logging.getLogger("transferrank.workers.ray")


#: default actor count on a CPU-only cluster is one per CPU, capped here (each holds its encoders)
MAX_DEFAULT_CPU_ACTORS = 8


class EncoderLoadError(RuntimeError):
    """The encoder could not be built on the worker (bad path, missing weights, no network)."""


def _device_batch_size() -> int | None:
    """Batch size for this process's device: None on CPU (encoder default), larger on GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            gib = torch.cuda.get_device_properties(0).total_memory / 2**30
            return 512 if gib >= 40 else 256 if gib >= 16 else 128
    except Exception:  # pragma: no cover - torch missing or a broken CUDA install
        pass
    return None


class EncoderWorker:
    """Actor body: a bounded LRU of loaded encoders; embeds texts and trains ESMs."""

    def __init__(self, cache_size: int = 2, torch_threads: int | None = None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        self.cache = EncoderCache(capacity=cache_size)
        self.batch_size = _device_batch_size()

    def info(self) -> dict:
        device = "cpu"
        threads = None
        try:
            import torch

            threads = torch.get_num_threads()
            if torch.cuda.is_available():
                device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
        except Exception:  # pragma: no cover
            pass
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": device,
            "torch_threads": threads,
            "batch_size": self.batch_size,
            "loaded_encoders": self.cache.names(),
        }

    def pid(self) -> int:
        return os.getpid()

    def embed(self, encoder: str, texts: list[str], sink=None, job_id: str = "") -> np.ndarray:
        try:
            enc = self.cache.get(encoder)
        except Exception as exc:
            raise EncoderLoadError(
                f"encoder {encoder!r} could not be loaded on the Ray worker: {type(exc).__name__}: {exc}"
            ) from None
        return embed_texts(enc, texts, batch_size=self.batch_size, progress=_sink_progress(sink, job_id))

    def train_esm(self, request: EsmTrainRequest, sink=None, job_id: str = ""):
        from app.training.esm_job import train_esm

        return train_esm(request, _sink_progress(sink, job_id))

    def score_esms(self, request, sink=None, job_id: str = "") -> np.ndarray:
        from app.workers.scoring import score_esm_chunk

        report = _sink_progress(sink, job_id)
        return score_esm_chunk(request, report)


def _sink_progress(sink, job_id: str) -> ProgressFn | None:
    if sink is None:
        return None

    def progress(value: float, message: str | None = None, /) -> None:
        sink.report.remote(job_id, float(value))  # fire and forget

    return progress


class ProgressSink:
    """Actor: latest progress per job id (reported by workers, polled by the driver)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def report(self, job_id: str, value: float) -> None:
        self.values[job_id] = max(self.values.get(job_id, 0.0), value)

    def get(self, job_id: str) -> float:
        return self.values.get(job_id, 0.0)

    def forget(self, job_id: str) -> None:
        self.values.pop(job_id, None)


def _unwrap(exc: BaseException) -> BaseException:
    """Turn Ray's wrappers into the error a person can act on."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return cause
        try:
            return exc.as_instanceof_cause()
        except Exception:  # pragma: no cover
            return exc
    if isinstance(exc, RayActorError):
        return RuntimeError(f"the Ray worker running this job died and the retries are used up: {exc}")
    return exc


class _ActorSlot:
    def __init__(self, handle, cache_size: int) -> None:
        self.handle = handle
        self.inflight = 0
        self.encoders: OrderedDict[str, None] = OrderedDict()  # driver-side mirror of the actor LRU
        self.cache_size = cache_size

    def note_encoder(self, name: str) -> None:
        self.encoders[name] = None
        self.encoders.move_to_end(name)
        while len(self.encoders) > self.cache_size:
            self.encoders.popitem(last=False)


class RayBackend(WorkerBackend):
    """Runs jobs on a pool of Ray actors.

    ``address``: ``"host:port"``, ``"ray://host:port"``, ``"auto"`` (the cluster started by
    ``ray start`` on this machine), or ``"local"`` / ``None`` (a private Ray instance in this
    process; if this process is already connected to Ray, that connection is reused).
    ``num_actors``: default one per GPU of the cluster, else one per ``cpus_per_actor`` CPUs
    (at most ``MAX_DEFAULT_CPU_ACTORS``); an explicit number is capped at the GPU count.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_actors: int | None = None,
        cpus_per_actor: int = 1,
        encoder_cache_size: int = 2,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        namespace: str = "transferrank",
        poll_interval: float = 0.5,
        wait_for_workers: float = 60.0,
    ) -> None:
        if num_actors is not None and num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if cpus_per_actor < 1:
            raise ValueError(f"cpus_per_actor must be >= 1, got {cpus_per_actor}")
        self.address = address
        self.poll_interval = poll_interval
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
            if address in (None, "", "local"):
                ray.init(address="local", include_dashboard=False, **kwargs)
            else:
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, RuntimeError) as exc:
                    raise RuntimeError(
                        f"cannot connect to the Ray cluster at {address!r}: {exc}. Check that `ray start "
                        "--head` runs there and that this process has the cluster's auth token: Ray >= 2.59 "
                        "enables token authentication; with an explicit host:port set RAY_AUTH_MODE=token "
                        "(and RAY_AUTH_TOKEN, or the token in ~/.ray/auth_token), or use "
                        "TRANSFERRANK_RAY_ADDRESS=auto for a cluster started on this machine"
                    ) from exc
            self._owns_ray = True
        resources = self._wait_for_resources(wait_for_workers)
        self.gpus = int(resources.get("GPU", 0))
        if self.gpus > 0:
            # one GPU per actor: more actors than GPUs would wait forever for a device
            num_actors = self.gpus if num_actors is None else min(num_actors, self.gpus)
            options = {"num_gpus": 1, "num_cpus": 1}
            threads = None
        else:
            if num_actors is None:  # one actor per cpus_per_actor CPUs, at most MAX_DEFAULT_CPU_ACTORS
                cpus = int(resources.get("CPU", 0))
                num_actors = max(1, min(MAX_DEFAULT_CPU_ACTORS, cpus // cpus_per_actor))
            options = {"num_cpus": cpus_per_actor}
            threads = cpus_per_actor
        self.num_actors = num_actors
        self.options = {**options, "max_restarts": max_restarts, "max_task_retries": max_task_retries}
        actor_cls = ray.remote(EncoderWorker).options(max_concurrency=1, **self.options)
        self._new_actor = lambda: actor_cls.remote(encoder_cache_size, threads)
        self._slots = [_ActorSlot(self._new_actor(), encoder_cache_size) for _ in range(num_actors)]
        self._sink: Any = ray.remote(ProgressSink).options(num_cpus=0, max_restarts=-1, max_task_retries=0).remote()
        self._lock = threading.Lock()
        # coordinator threads only wait on Ray and relay progress; they do no compute
        self._coord = ThreadPoolExecutor(max_workers=max(8, 4 * num_actors), thread_name_prefix="transferrank-ray")

    @staticmethod
    def _wait_for_resources(timeout: float) -> dict:
        """Cluster resources, waiting up to ``timeout`` s for a node with CPUs or GPUs to join.

        In the compose stack the API may connect before any ray-worker has registered; deciding
        CPU vs GPU actors on an empty cluster would pick CPU for good.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            resources = ray.cluster_resources()
            if resources.get("GPU", 0) > 0 or resources.get("CPU", 0) > 0 or time.monotonic() >= deadline:
                if not (resources.get("GPU", 0) or resources.get("CPU", 0)):
                    log.warning("the Ray cluster has no CPUs or GPUs yet; actors will wait for workers to join")
                return resources
            time.sleep(1.0)

    # ---------------------------------------------------------------- pool
    def actors(self) -> list:
        return [s.handle for s in self._slots]

    def actor_pids(self) -> list[int]:
        return ray.get([s.handle.pid.remote() for s in self._slots])

    def _acquire(self, encoder: str | None) -> _ActorSlot:
        with self._lock:
            slot = min(self._slots, key=lambda s: (s.inflight, encoder not in s.encoders))
            slot.inflight += 1
            if encoder:
                slot.note_encoder(encoder)
            return slot

    def _replace(self, slot: _ActorSlot) -> None:
        """The actor used up its restarts: put a fresh one in its slot so the pool keeps its size."""
        with self._lock:
            old, slot.handle = slot.handle, self._new_actor()
            slot.encoders.clear()
        log.warning("a Ray worker actor died for good; replaced it with a new one")
        try:
            ray.kill(old, no_restart=True)
        except Exception:  # already gone
            pass

    def _release(self, slot: _ActorSlot) -> None:
        with self._lock:
            slot.inflight -= 1

    def _run(self, encoder: str | None, call, progress: ProgressFn | None):
        """Run ``call(actor_handle, job_id) -> ObjectRef`` on a chosen actor; relay progress."""
        report = _safe_progress(progress)
        job_id = uuid.uuid4().hex
        slot = self._acquire(encoder)
        try:
            ref = call(slot.handle, job_id)
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll_interval)
                if ready:
                    out = ray.get(ref)
                    if report is not None:
                        report(1.0)
                    return out
                if report is not None:
                    try:
                        report(ray.get(self._sink.get.remote(job_id), timeout=10))
                    except Cancelled:  # the job was cancelled: stop the remote task too
                        try:
                            ray.cancel(ref)
                        except Exception:  # pragma: no cover - already finished
                            pass
                        raise
                    except Exception:  # progress is best effort
                        pass
        except BaseException as exc:
            from ray.exceptions import RayActorError

            if isinstance(exc, RayActorError):
                self._replace(slot)
            raise _unwrap(exc) from None
        finally:
            self._release(slot)
            try:
                self._sink.forget.remote(job_id)
            except Exception:  # pragma: no cover - Ray shutting down
                pass

    # ---------------------------------------------------------------- jobs
    def submit_embed(self, encoder: str | EncoderSpec, texts: Sequence[str], *,
                     progress: ProgressFn | None = None) -> Future:
        texts = list(texts)

        def run() -> np.ndarray:
            key = encoder.name if isinstance(encoder, EncoderSpec) else encoder  # a user model travels as its spec
            out = self._run(key, lambda h, job: h.embed.remote(encoder, texts, self._sink, job), progress)
            return np.array(out, dtype=np.float32)  # a writable copy owned by the caller

        return self._coord.submit(run)

    def submit_train_esm(self, request: EsmTrainRequest, *, progress: ProgressFn | None = None) -> Future:
        def run():
            return self._run(None, lambda h, job: h.train_esm.remote(request, self._sink, job), progress)

        return self._coord.submit(run)

    def submit_score_esms(self, request, *, progress: ProgressFn | None = None) -> Future:
        def run() -> np.ndarray:
            out = self._run(None, lambda h, job: h.score_esms.remote(request, self._sink, job), progress)
            return np.array(out, dtype=np.float64)

        return self._coord.submit(run)

    def describe(self) -> dict:
        out: dict[str, Any] = {
            "backend": self.name,
            "address": self.address,
            "workers": self.num_actors,
            "gpus": self.gpus,
            "actor_options": dict(self.options),
        }
        try:
            infos = ray.get([s.handle.info.remote() for s in self._slots], timeout=60)
            out["devices"] = sorted({i["device"] for i in infos})
            out["actors"] = infos
        except Exception as exc:  # a restarting actor should not break a health report
            out["devices"] = []
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out

    def shutdown(self) -> None:
        self._coord.shutdown(wait=False, cancel_futures=True)
        for handle in [*(s.handle for s in self._slots), self._sink]:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # pragma: no cover - already gone
                pass
        self._slots = []
        if self._owns_ray:
            ray.shutdown()
