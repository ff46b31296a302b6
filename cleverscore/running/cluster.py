"""Running a collection's work items on a Ray cluster (`--ray ADDRESS`).

The driver (running/collect.py) plans the work items and writes every result file; the
workers, Ray actors, each load the model and compile the step once, then compute one work item
(an image with its pending targets) at a time and send back the maxima. No shared filesystem
is needed: a `--model_path` file travels through Ray's object store, and joined clusters get
the project's code (with the zoo weights in models/) as the job's working directory.

Nothing in the compute core (cleverscore.sampling) knows about Ray, and ray is an optional
dependency (requirements-cluster.txt), imported only here.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import signal
import socket
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from cleverscore.errors import CleverError, UsageError
from cleverscore.locations import CHECKOUT, IN_CHECKOUT, PACKAGE
from cleverscore.settings import CollectSettings, ModelSettings

INSTALL_HINT = "--ray needs the optional package ray: pip install -r requirements-cluster.txt"
REPO = CHECKOUT
MAX_RESTARTS = 3  # a worker that dies more often than this fails the run instead of looping
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # work items and maxima are small
CLOSE_WAIT_S = 2.0  # how long idle workers get to close their sample pools at the end
CONNECT_TIMEOUT_S = 30.0  # how long a run waits for a cluster's head to answer before giving up
WAIT_S = 1.0  # longest wait for a result, so Ctrl-C and SIGTERM are handled promptly
CODE_EXCLUDES = [".git", ".venv", "data", "tests", "logs", "lipschitz_mat", "reproduction", "bench/results", "*.mat"]


def require_ray(address: str = ""):
    """Import ray, or fail with the one-line install hint."""
    if address == "local":
        # A local instance serves one machine: its processes talk over the loopback interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as err:
        raise UsageError(INSTALL_HINT) from err
    return ray


def prepare_driver(address: str) -> None:
    """Check that ray is there and keep the driver's TensorFlow off the GPUs (the workers use them)."""
    require_ray(address)
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already ran in this process (a program embedding the CLI): leave it
        pass


def head_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` (or `ray://host:port`) address; None for `local` and `auto`."""
    if address in ("local", "auto"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"`ray` address {address!r} is not local, auto or HOST:PORT")
    return host.strip("[]"), int(port)


def wait_for_head(address: str, timeout_s: float) -> None:
    """Return once the cluster's head accepts connections; a one-line error after `timeout_s`.

    Ray itself retries an address where nothing listens for minutes, printing multi-line
    warnings; a plain TCP connection says within seconds whether anything is there.
    """
    endpoint = head_endpoint(address)
    if endpoint is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(endpoint, timeout=max(0.1, min(2.0, deadline - time.monotonic()))).close()
            return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise CleverError(f"no Ray cluster answers at {address} within {timeout_s:g} s "
                                  f"({err.strerror or type(err).__name__}); start one there (ray start --head) or "
                                  "check the address (`ray_timeout` sets how long to wait)") from None
        time.sleep(0.5)


def connect(address: str, save: str = "", timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Start (`local`) or join (`auto`, `host:port`) Ray; True if this process started the instance."""
    ray = require_ray(address)
    if ray.is_initialized():  # a program embedding collect_gradients (or a test) is already connected
        return False
    wait_for_head(address, timeout_s)
    sigterm = signal.getsignal(signal.SIGTERM)
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            ray.init(address="local", _node_ip_address="127.0.0.1", object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     **options)
        else:
            ray.init(address=address, runtime_env=code_for_workers(save), **options)
    except (ConnectionError, ValueError, RuntimeError) as err:
        _stop_partial_start(ray)
        raise CleverError(f"cannot start or join Ray at {address!r}: {_first_line(err)}") from err
    except BaseException:  # Ctrl-C or SIGTERM during start-up: stop what ray.init already started
        _stop_partial_start(ray)
        raise
    finally:
        # ray.init replaces the SIGTERM handler by a bare sys.exit, which would skip our cleanup message.
        signal.signal(signal.SIGTERM, sigterm)
    return address == "local"


def code_for_workers(save: str) -> dict:
    """Ray's runtime environment that ships this code to a cluster's machines: the checkout (without its
    data and results), or, for an installed copy, the package alone (site-packages is no working folder)."""
    if IN_CHECKOUT:
        return {"working_dir": str(REPO), "excludes": CODE_EXCLUDES + _inside_repo(save)}
    return {"py_modules": [str(PACKAGE)]}


def _stop_partial_start(ray) -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001, S110 - best effort on the way out of a failed start
        pass


def _inside_repo(folder: str) -> list[str]:
    """The results folder, as a working-directory exclude, when it lies inside the project."""
    if not folder:
        return []
    try:
        return [str(Path(folder).resolve().relative_to(REPO))]
    except ValueError:
        return []


def _first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


def pack_path(path: str) -> bytes:
    """A file or folder (SavedModel) as an in-memory tar, to ship through the object store.

    An ONNX graph travels with the external data files it names (first the graph, so that
    `unpack_path` returns it), laid out beside it as they were."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=Path(path).name)
        if path.lower().endswith(".onnx"):
            from cleverscore.models.onnx_source import external_locations, read_onnx

            for location in external_locations(read_onnx(path).model):
                tar.add(str(Path(path).parent / location), arcname=location)
    return buffer.getvalue()


def unpack_path(data: bytes, folder: str) -> str:
    """Extract a `pack_path` archive into `folder`; the path of the file or folder it held."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
        return str(Path(folder) / tar.getnames()[0].split("/")[0])


def shipped_paths(model: ModelSettings) -> list[str]:
    """The model settings naming files the workers load: their contents travel with the actors."""
    names = ["model_path"]
    if model.dataset == "imagenet" and os.path.isfile(model.weights):
        names.append("weights")
    return [name for name in names if getattr(model, name)]


def get_results(ray, refs, context: str):
    """ray.get, with a worker's failure turned into the one-line error a local run would print."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, CleverError):
            raise cause from None
        raise CleverError(f"{context}: {_first_line(cause or err)}") from None
    except ray.exceptions.RayActorError as err:
        raise CleverError(f"{context}: {_first_line(err)}") from None


class GradientWorker:
    """A Ray actor: loads the model once, then computes work items (running/execute.compute_item)."""

    def __init__(self, settings: CollectSettings, image_shape: tuple[int, ...], names: list[str], *contents: bytes):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads in this process
        from cleverscore.running.loading import load_classifier
        from cleverscore.sampling.estimator import EstimateLipschitz
        from cleverscore.sampling.shared_memory import remove_stale_segments

        remove_stale_segments(verbose=False)  # left on this machine by a worker killed mid-item (--sampler pool)

        sampling = settings.sampling
        self.sampling, self.bounds = sampling, settings.bounds
        self.estimator = EstimateLipschitz(seed=sampling.seed, nthreads=sampling.nthreads, sampler=sampling.sampler,
                                           log=None)
        folder = tempfile.mkdtemp(prefix="clever_worker_")
        try:
            # Ray resolved the object refs into bytes: unpack them here and point the settings at them.
            local = {name: unpack_path(data, folder) for name, data in zip(names, contents)}
            if "model_path" in local:
                local["model_path"] = Path(local["model_path"])
            settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, **local))
            load_classifier(settings, self.estimator, image_shape)  # the model is in memory now: the files can go
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def pid(self) -> int:
        return os.getpid()

    def run(self, item):
        from cleverscore.running.execute import compute_item

        return compute_item(self.estimator, self.sampling, item, bounds=self.bounds)

    def close(self) -> None:
        self.estimator.close()  # the sample pool's processes and shared memory, if any


class RayExecutor:
    """Runs work items on Ray actors; the same run/close interface as execute.LocalExecutor.

    Results come back in the order items finish. Each item's samples are seeded by (seed, image),
    so the maxima do not depend on which worker ran it, nor on how often it was rerun.
    """

    def __init__(self, settings: CollectSettings):
        self.settings = settings
        self.ray = require_ray(settings.ray)
        self.started = False
        self.actors: list = []

    def _start_workers(self, image_shape: tuple[int, ...]) -> None:
        """Connect and start the actors: only once there is work, so a finished run resumes at no cost."""
        if self.actors:
            return
        self.started = connect(self.settings.ray, str(self.settings.save), self.settings.ray_timeout)
        from cleverscore.log_lines import ray_workers_line

        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = self.settings.ray_workers or gpus or len(nodes)
        # One GPU per worker; CPU workers are spread over the machines (TensorFlow uses all cores of one).
        options = {"num_gpus": 1} if gpus else {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
        actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(GradientWorker)
        names = shipped_paths(self.settings.model)
        refs = [ray.put(pack_path(str(getattr(self.settings.model, name)))) for name in names]  # one copy for all
        self.actors = [actor_class.options(**options).remote(self.settings, image_shape, names, *refs)
                       for _ in range(count)]
        self.pids = get_results(self.ray, [a.pid.remote() for a in self.actors], "a Ray worker failed to start")
        address = ray.get_runtime_context().gcs_address
        print(ray_workers_line(count, len(nodes), gpus, address), flush=True)

    def run(self, items: Iterable) -> Iterator:
        """Yield each item's ItemOutcome as it finishes, keeping every worker busy with one item."""
        from cleverscore.log_lines import ProgressBar

        queue = deque(items)
        total = len(queue)
        if not total:
            return
        self._start_workers(tuple(queue[0].x0.shape))  # an ONNX model's layout is resolved from it
        sampling = self.settings.sampling
        grads = {id(item): len(item.todo) * sampling.nsamps * sampling.niters for item in queue}
        bar = None if self.settings.quiet else ProgressBar(f"{total} work items on {len(self.actors)} workers", total,
                                                       0, unit="gradients")
        idle, running, done, amount = list(self.actors), {}, 0, 0
        while queue or running:
            while idle and queue:
                actor, item = idle.pop(), queue.popleft()
                running[actor.run.remote(item)] = (actor, item)
            finished, _ = self.ray.wait(list(running), num_returns=1, timeout=WAIT_S)
            for ref in finished:
                actor, item = running.pop(ref)
                outcome = get_results(self.ray, ref, f"a Ray worker failed on image {item.image_id}")
                idle.append(actor)
                done, amount = done + 1, amount + grads[id(item)]
                if bar:
                    bar(done, amount)
                yield outcome

    def close(self) -> None:
        """Stop the workers (and the Ray instance, if this run started it)."""
        if self.actors:
            try:  # idle workers close their sample pools; busy ones (an interrupted run) are killed below
                self.ray.get([actor.close.remote() for actor in self.actors], timeout=CLOSE_WAIT_S)
            except Exception:  # noqa: BLE001, S110 - a timeout or a dead worker: the kill below is enough
                pass
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - already dead or the cluster is gone; nothing left to stop
                pass
        self.actors = []
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
