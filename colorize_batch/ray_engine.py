"""The Ray engine: the same stages as the local engine, spread over a Ray cluster's actors.

    driver: plan_run (discovery, manifest skips, collisions) -> ray.data.from_items(rows)
    actors: decode -> stage_batch (triage, predict_planes) -> render_result   (model loaded once per actor)
    driver: one status row per file -> FileResult -> the runner's ResultSink (manifest, counts, report)

The driver only checks and describes the weights file (:func:`~colorize_batch.weights.read_weights_info`);
the network is built in the actors alone.

Rows are plain values (index into ``plan.jobs``, source, output, page), so the file list,
tree mirroring, manifest and lock stay exactly the local engine's; images never travel
through Ray's object store: actors read sources, weights and write outputs by path, so on a
cluster IN, OUT and the weights file must be on storage every node sees at the same paths
(an actor whose weights differ from the driver's refuses to start), and every node needs
colorize-batch installed.

Ray is optional: ``pip install 'colorize-batch[ray]'``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path, PurePosixPath
from typing import cast

import numpy as np

from .config import PipelineConfig
from .batch_transport import DecodeDataset
from .discovery import WorkItem
from .engine import EngineError
from .hints import Hints
from .names import display
from .planning import Job, Plan
from .signals import StopFlag
from .stages import FileResult, ResultSink, Status, decode_notes, render_result, stage_batch
from .weights import WeightsInfo, read_weights_info

log = logging.getLogger("colorize_batch")

INSTALL_HINT = "--engine ray needs the ray extra: pip install 'colorize-batch[ray]'"
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # status rows and the weights only: images never go through it
STAGE_COLUMNS = ("decode", "forward", "recombine", "encode", "write")


class RayEngineError(EngineError):
    """Ray is missing, unreachable, or cannot give the resources asked for (a usage error, exit 2)."""


def import_ray():
    """``ray`` (with Ray Data), or :class:`RayEngineError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra: pandas/pyarrow
    except ImportError as exc:
        raise RayEngineError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def _job_for(source: str, relative: str, output: str, page: int, hints: str = "", copy_problem: str = "") -> Job:
    """The stages' view of one row (the fingerprint stays with the driver's job; ``hints``: the
    planned job's hints as JSON, :func:`_hints_json`)."""
    return Job(WorkItem(Path(source), PurePosixPath(relative)), Path(output), "", page,
               hints=Hints.from_json(hints) if hints else None, copy_problem=copy_problem or None)


class ColorizeActor:
    """Ray Data callable class: one per actor, model loaded once; a batch of rows in, status rows out."""

    def __init__(self, config_json: str, model_id: str, device: str, threads: int = 1):
        import torch

        from .inference import Colorizer
        from .weights import load_weights

        torch.set_num_threads(threads)
        self.config = PipelineConfig.model_validate_json(config_json)
        self.model_id = model_id
        generator, info = load_weights(self.config.model.weights, device)
        if info.model_id != model_id:  # another file at that path on this node: outputs would lie about their model
            raise RayEngineError(f"{self.config.model.weights} on this node is {info.model_id}, the driver's is {model_id}")
        self.colorizer = Colorizer.for_model(generator, torch.device(device), self.config.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.config
        jobs = [_job_for(str(batch["source"][r]), str(batch["relative"][r]), str(batch["output"][r]), int(batch["page"][r]),
                         str(batch["hints"][r]), str(batch["copy_problem"][r])) for r in range(len(batch["index"]))]
        decoder = DecodeDataset([job.item.source for job in jobs], cfg.model.size, cfg.input.max_pixels, [job.page for job in jobs])
        items = [decoder[r] for r in range(len(jobs))]
        staged = stage_batch(self.colorizer, list(zip(items, jobs)), cfg, contain_errors=True)
        shares = {"forward": staged.forward_seconds, "recombine": staged.plane_seconds}
        shares = {stage: seconds / max(1, len(staged.renders)) for stage, seconds in shares.items()}
        rendered = [_with_shares(render_result(r.item, r.ab, r.planes, r.job, cfg, self.model_id), shares)
                    for r in staged.renders]
        row_of = {id(job): r for r, job in enumerate(jobs)}
        results: list[FileResult | None] = [None] * len(jobs)
        for result in staged.settled + rendered:
            results[row_of[id(result.job)]] = result
        assert all(result is not None for result in results), "every row has a result"
        return status_rows(batch["index"], cast("list[FileResult]", results), [item.decode_s for item in items],
                           [decode_notes(item, job) for item, job in zip(items, jobs)])


def _with_shares(result: FileResult, shares: dict[str, float]) -> FileResult:
    """``result`` with its share of the batch's forward pass and chroma planes added to its stage seconds."""
    for stage, seconds in shares.items():
        result.stage_seconds[stage] = result.stage_seconds.get(stage, 0.0) + seconds
    return result


def status_rows(index: np.ndarray, results: list[FileResult], decode_s: list[float],
                notes: list[list[str]] | None = None) -> dict[str, np.ndarray]:
    """The actor's answer for a batch: one status row per file (plain columns, no images; a file's
    report notes as one JSON list)."""
    out: dict[str, np.ndarray] = {
        "index": np.asarray(index, dtype=np.int64),
        "status": np.array([res.status.value for res in results], dtype=object),
        "sha256": np.array([res.sha256 or "" for res in results], dtype=object),
        "reason": np.array([res.reason or "" for res in results], dtype=object),
        "output": np.array([str(res.output or "") for res in results], dtype=object),
        "disk_full": np.array([res.disk_full for res in results], dtype=bool),
        "decode_s": np.array(decode_s, dtype=np.float64),
        "notes": np.array([json.dumps(n) for n in notes or [[] for _ in results]], dtype=object),
    }
    for stage in STAGE_COLUMNS[1:]:
        out[f"{stage}_s"] = np.array([res.stage_seconds.get(stage, 0.0) for res in results], dtype=np.float64)
    return out


def root_cause(exc: BaseException) -> str:
    """The innermost error of a Ray failure, one line (Ray wraps it in tracebacks of its own)."""
    found, seen = type(exc).__name__, set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(current).splitlines()]
        lines = [line for line in lines if line]
        if lines:
            found = lines[-1]
        current = current.__cause__
    return found


def result_from_row(row: dict, job: Job) -> tuple[FileResult, float, list[str]]:
    """A status row back into the driver's :class:`FileResult` (+ its decode seconds and report notes)."""
    status = Status(str(row["status"]))
    output = Path(str(row["output"])) if status.wrote_output else None  # copy mode keeps the source's suffix
    stages = {stage: float(row[f"{stage}_s"]) for stage in STAGE_COLUMNS[1:]}
    result = FileResult(job, status, sha256=str(row["sha256"]) or None, reason=str(row["reason"]) or None,
                        stage_seconds={k: v for k, v in stages.items() if v}, disk_full=bool(row["disk_full"]), output=output)
    return result, float(row["decode_s"]), json.loads(str(row["notes"]))


class RayEngine:
    """An :class:`~colorize_batch.engine.Engine` whose stages run in Ray actors (same results as the local engine).

    ``address``: None starts a local Ray (``num_cpus`` = actors + 1), or ``auto`` / ``ray://host:port``
    joins a cluster. ``actors``: size of the actor pool (default: one per GPU, else cluster CPUs - 1).
    ``gpus_per_actor``: None = 0 with ``--device cpu``, else a share of the cluster's GPUs if it has
    any (several actors may share one GPU); a GPU request the cluster cannot meet fails before any
    actor starts (Ray would wait for it forever).
    """

    def __init__(self, config: PipelineConfig, quiet: bool = False, address: str | None = None,
                 actors: int | None = None, gpus_per_actor: float | None = None):
        if actors is not None and actors < 1:
            raise RayEngineError(f"--actors {actors}: must be at least 1")
        if gpus_per_actor is not None and gpus_per_actor < 0:
            raise RayEngineError(f"--gpus-per-actor {gpus_per_actor}: must not be negative")
        self.config = config
        self.quiet = quiet
        self.address = address
        self.actors = actors
        self.gpus_per_actor = gpus_per_actor
        self.description = "ray"
        self.model_id = ""

    @property
    def ray(self):
        return import_ray()

    def check(self) -> None:
        import_ray()

    def load(self, weights: Path, sha256: str) -> WeightsInfo:
        """Check and describe the weights file; only the actors build the network (each once)."""
        info = read_weights_info(weights, sha256)
        self.model_id = info.model_id
        return info

    # --------------------------------------------------------------------- cluster
    def _connect(self) -> bool:
        """Start or join Ray; True when this call started it (and so shuts it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        common = dict(ignore_reinit_error=True, log_to_driver=False, logging_level=logging.ERROR if self.quiet else logging.WARNING)
        try:
            if self.address:
                ray.init(address=self.address, **common)
            else:
                ray.init(num_cpus=self.actors + 1 if self.actors else None, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                         include_dashboard=False, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local Ray instance"
            raise RayEngineError(f"cannot start or reach {where}: {exc}".splitlines()[0]) from None
        return True

    def _resources(self) -> tuple[int, float, str]:
        """(actors, GPUs per actor, actor device), checked against the cluster before anything starts."""
        resources = self.ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        device = self.config.model.device
        want = self.gpus_per_actor
        if want is None:
            if device == "cpu":
                want = 0.0
            elif gpus:
                per = self.actors or int(gpus)
                want = 1.0 if gpus >= per else round(gpus / per, 3)  # actors share the GPUs
            elif device.startswith("cuda"):
                raise RayEngineError(f"--device {device}: the Ray cluster has no GPUs (cluster resources: {cpus:g} CPUs, 0 GPUs)")
            else:
                want = 0.0
        elif want and device == "cpu":
            raise RayEngineError(f"--gpus-per-actor {want:g} with --device cpu: choose one")
        if want and not gpus:
            raise RayEngineError(f"--gpus-per-actor {want:g}: the Ray cluster has no GPUs (cluster resources: {cpus:g} CPUs, 0 GPUs)")
        actors = self.actors or (max(1, int(gpus / want)) if want else max(1, int(cpus) - 1))
        if want and actors * want > gpus + 1e-9:
            raise RayEngineError(f"{actors} actor(s) x {want:g} GPU need {actors * want:g} GPUs; the Ray cluster has {gpus:g} "
                                 "(lower --actors or --gpus-per-actor)")
        if actors > cpus:
            raise RayEngineError(f"{actors} actor(s) need {actors} CPUs; the Ray cluster has {cpus:g} (lower --actors)")
        return actors, want, "cuda" if want else "cpu"

    # --------------------------------------------------------------------- run
    def run(self, plan: Plan, sink: ResultSink, stop: StopFlag) -> None:
        ray, cfg, stats = self.ray, self.config, sink.stats
        jobs = plan.jobs
        started = self._connect()
        ray_data_log = logging.getLogger("ray.data")
        ray_data_level = ray_data_log.level
        try:
            actors, gpus, device = self._resources()
            self.description = f"ray: {actors} actor(s) on {device}" + (f" ({gpus:g} GPU each)" if gpus else "")
            log.info("%s", self.description)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the run's own progress display counts the files
            context.print_on_execution_start = False
            ray_data_log.setLevel(logging.ERROR)  # its per-dataset INFO lines and the "progress bars disabled" note
            rows = [{"index": i, "source": str(j.item.source), "relative": str(j.item.relative), "output": str(j.output),
                     "page": j.page, "hints": j.hints.to_json() if j.hints else "", "copy_problem": j.copy_problem or ""}
                    for i, j in enumerate(jobs)]
            remote = {"num_gpus": gpus} if gpus else {}
            dataset = ray.data.from_items(rows).map_batches(
                ColorizeActor,
                fn_constructor_kwargs={"config_json": cfg.model_dump_json(), "model_id": self.model_id, "device": device},
                batch_size=cfg.loader.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=1,
                **remote,
            )
            batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
            try:
                for batch in batches:
                    for r in range(len(batch["index"])):
                        row = {key: values[r] for key, values in batch.items()}
                        job = jobs[int(row["index"])]
                        result, decode_s, notes = result_from_row(row, job)
                        stats.stage_seconds["decode"] += decode_s
                        for note in notes:
                            stats.note(job.source_name, note)
                        if result.status is Status.SKIPPED_COLOR:
                            log.info("%s: already in colour; skipped (input.color_inputs: skip)", display(job.source_name))
                        sink.add(result)
                    if stop or stats.stopped_reason:
                        break  # results already back are recorded; files still in the actors are redone next run
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
        except ray.exceptions.RayError as exc:
            raise RayEngineError(f"the Ray run failed: {root_cause(exc)}") from exc
        finally:
            ray_data_log.setLevel(ray_data_level)
            if started:
                ray.shutdown()
        if stop:
            stats.interrupted = True
