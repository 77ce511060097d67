"""Shared fixtures: tiny data sets written in the real on-disk formats, and a throwaway MLflow store."""
from __future__ import annotations

import contextlib
import gzip
import importlib.util
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

# The tests never reach the network: with the hub offline, a missing weight file fails at once instead of after
# the hub client's retries (set before anything imports huggingface_hub, which reads it on import).
os.environ["HF_HUB_OFFLINE"] = "1"
# Every local Ray the tests start (jobs inherit this environment) leaves out the dashboard: ~1.3 s less a start
os.environ["CV_RAY_DASHBOARD"] = "0"

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_images(n: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images, N×C×H×W, whose class (0..9) shows as a class-specific template under noise: easy to
    learn, so a few steps of training visibly lower the loss."""
    # class k: stripes of frequency k % 5 + 1, vertical for k < 5, horizontal otherwise, in a class colour
    rng = np.random.default_rng(1234)  # the same templates for every split
    u = np.arange(size) / size
    templates = np.empty((10, channels, size, size))
    for k in range(10):
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (k % 5 + 1) * u)
        pattern = np.tile(wave, (size, 1)) if k < 5 else np.tile(wave[:, None], (1, size))
        templates[k] = pattern * rng.uniform(0.5, 1.0, (channels, 1, 1))
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = 0.6 * templates[labels] + 0.4 * rng.random((n, channels, size, size))
    return (images * 255).astype(np.uint8), labels


def write_cifar10(root: Path, per_batch: int = 60, n_test: int = 100) -> Path:
    """CIFAR-10's python-pickle layout (data_batch_1..5, test_batch, batches.meta), as torchvision reads it."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        images, labels = synthetic_images(n, 3, 32, seed=i)
        batch = {"batch_label": name, "labels": labels.tolist(), "data": images.reshape(n, 3072),
                 "filenames": [f"{name}_{j}.png" for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root


def write_mnist(root: Path, n_train: int = 200, n_test: int = 50) -> Path:
    """MNIST's idx files (big-endian headers), unpacked and gzipped, in torchvision's MNIST/raw layout."""
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, 1, 28, seed)
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()}
        for name, payload in files.items():
            (folder / name).write_bytes(payload)
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
    return root


PET_BREEDS = (("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 6))  # a subset: class ids not contiguous


def write_pets(root: Path, train_per_breed: int = 8, test_per_breed: int = 6) -> Path:
    """Oxford-IIIT Pet's layout (images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt with "<id> <class id>
    <species> <breed id>" lines) for three breeds, as torchvision reads it: JPEGs of different sizes whose
    colour and stripes depend on the breed."""
    (root / "oxford-iiit-pet" / "images").mkdir(parents=True, exist_ok=True)
    (root / "oxford-iiit-pet" / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    lines = {"trainval": [], "test": []}
    for k, (breed, class_id) in enumerate(PET_BREEDS):
        for n in range(train_per_breed + test_per_breed):
            h, w = rng.integers(60, 120, size=2)
            stripes = (np.sin(np.arange(w) * (k + 1) / 4) > 0)[None, :, None]
            colour = np.array([[[200, 60, 60], [60, 200, 60], [60, 60, 200]][k]])
            image = np.clip(colour * (0.6 + 0.4 * stripes) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "oxford-iiit-pet" / "images" / f"{breed}_{n + 1}.jpg", quality=90)
            split = "trainval" if n < train_per_breed else "test"
            lines[split].append(f"{breed}_{n + 1} {class_id} {1 if breed[0].isupper() else 2} {n + 1}")
    for split, rows in lines.items():
        (root / "oxford-iiit-pet" / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def pets_root(tmp_path_factory) -> Path:
    return write_pets(tmp_path_factory.mktemp("pets"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"))


_empty_store: list[Path] = []  # the database of a new MLflow store, made once by `empty_store_template`


@pytest.fixture(scope="session", autouse=True)
def empty_store_template(tmp_path_factory) -> Path:
    """A new MLflow store's database, made once by MLflow itself. A store the tests give a job or a test starts as
    a copy of it: MLflow builds a new database's schema by running its migrations (~1.7 s, and in a job's driver
    they take the interpreter's lock from the job's own start-up). The tests of a store's own start make theirs."""
    db = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    _empty_store.append(db)
    return db


def new_store(store: Path) -> Path:
    """`store` with a new MLflow store's database in it, unless it has one already."""
    if _empty_store and not (store / "mlflow.db").exists():
        shutil.copyfile(_empty_store[0], store / "mlflow.db")
    return store


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh local MLflow store in a temp dir, selected through MLFLOW_TRACKING_URI as a user would."""
    uri = f"sqlite:///{new_store(tmp_path) / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def job_env(store: Path, data_root: Path | None = None) -> dict[str, str]:
    """The environment a job subprocess runs in: this one, minus any RAY_ADDRESS (jobs start their own local
    Ray), with the MLflow store in `store`, the data root if given, the hub offline (fail at once, no retries)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{new_store(store) / 'mlflow.db'}", "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore"}
    return env | ({"CV_DATA_ROOT": str(data_root)} if data_root is not None else {})


_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this session: a node takes several at once, and the
    OS may give a port just released (the previous call's) again."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def start_mlflow_server(store: Path, port: int, command: str = "server") -> subprocess.Popen:
    """`mlflow server` (or `mlflow ui`) on loopback over `store`/mlflow.db, in its own process group, once it
    answers /health; stop it with `stop_server`."""
    args = ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    if command == "server":
        args += ["--artifacts-destination", str(store / "mlartifacts")]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), command, *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            pass
        assert server.poll() is None and time.time() < deadline, f"mlflow {command} did not come up"
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def tune_cmd(store: Path, name: str, *args: str) -> list[str]:
    # --ray_address=local: always a fresh local Ray, never a cluster `ray start` left on the machine
    return [sys.executable, str(REPO / "jobs" / "tune_cnn.py"), "--smoke-test", f"--name={name}",
            f"--storage_path={store / 'ray'}", "--ray_address=local", *args]


def run_tune(store, data_root, name, *args, timeout=600):
    return subprocess.run(tune_cmd(store, name, *args), cwd=store, env=job_env(store, data_root),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def campaign_root(tmp_path_factory) -> Path:
    """One data root with all three data sets, large enough for every job's --smoke-test split."""
    root = tmp_path_factory.mktemp("campaign_data")
    write_cifar10(root, per_batch=200, n_test=300)
    write_mnist(root, n_train=800, n_test=100)
    return write_pets(root)


def campaign(store: Path, data_root: Path, *args: str, **kw) -> subprocess.Popen:
    env = job_env(store, data_root) | {"RAY_ADDRESS": "local", "CV_STORAGE_PATH": str(store / "ray"),
                                       "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "campaign.py"), "--smoke-test", *args], cwd=store,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    out = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope="session")
def smoke_campaign(tmp_path_factory, campaign_root):
    """`jobs/campaign.py --smoke-test`: every catalog ID once, in its own store. The study tests read its studies
    (experiments campaign_smoke.<job>) rather than running them again."""
    store = tmp_path_factory.mktemp("campaign")
    out = finish(campaign(store, campaign_root))
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("campaign_smoke")
    (parent,) = mlflow.MlflowClient().search_runs([exp.experiment_id])
    return store, out, parent


SMOKE_SWEEP = "campaign_smoke.tune_cnn"  # the smoke campaign's sweep: its MLflow experiment and Tune name


@pytest.fixture(scope="session")
def tune_smoke(smoke_campaign) -> tuple[Path, subprocess.CompletedProcess]:
    """The smoke campaign's sweep (`tune_cnn.py --smoke-test --name=campaign_smoke.tune_cnn`, 3 trials): its store
    and its console (the campaign's log of it, less the command line the campaign wrote first)."""
    store = smoke_campaign[0]
    log = (store / "campaign_logs" / "campaign_smoke-smoke" / "tune_cnn.log").read_text().split("\n", 1)[1]
    return store, subprocess.CompletedProcess(args=[], returncode=0, stdout=log, stderr="")


def load_job(name: str):
    """Import jobs/<name>.py as a module (jobs are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def execute_notebook(name: str) -> tuple[list, str]:
    """Run notebooks/<name> top to bottom in a fresh kernel; returns its outputs and their text. Any error
    output fails the calling test."""
    import nbclient
    import nbformat

    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    return outputs, text


def assert_readable(fig) -> None:
    """A figure a reader can use: drawn (not a blank canvas), every line visible (a one-point line has a marker),
    legend entries for exactly the labelled lines, tick labels short enough to read."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    assert (pixels != pixels[0, 0]).any(axis=-1).mean() > 0.02, "blank figure"
    for ax in fig.axes:
        labelled = []
        for line in ax.get_lines():
            y = np.asarray(line.get_ydata(), dtype=float)
            finite = int(np.isfinite(y).sum())
            assert finite >= 1, f"a line with nothing to draw in {ax.get_title()!r}"
            if finite == 1:
                assert line.get_marker() not in (None, "None", "", " "), f"an invisible one-point line in {ax.get_title()!r}"
            if not line.get_label().startswith("_"):
                labelled.append(line.get_label())
        legend = ax.get_legend()
        shown = [t.get_text() for t in legend.get_texts()] if legend else []
        assert sorted(shown) == sorted(labelled), f"legend {shown} for the lines {labelled}"
        if legend:  # inside the figure, not pushing the plot into a corner
            box, frame = legend.get_window_extent(canvas.get_renderer()), fig.bbox
            assert box.x0 >= frame.x0 and box.x1 <= frame.x1, "a legend wider than the figure"
        for tick in ax.get_xticklabels():
            assert len(tick.get_text()) <= 12, f"unreadable tick label {tick.get_text()!r}"


@contextlib.contextmanager
def staged_copy_ok():
    """The tests' tiny data sets are staged copies (no official checksums), which the loaders say once per root
    and process: expected here, so not shown."""
    from library.data import StagedCopyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StagedCopyWarning)
        yield


def lr_trace(cfg, data, steps: int, steps_per_epoch: int = 10) -> list[float]:
    """The first parameter group's learning rate at each of `steps` optimiser steps of `cfg`'s schedule."""
    from library.train.recipe import build_model, make_optimizer, make_scheduler

    optimizer = make_optimizer(cfg, build_model(cfg, data))
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.fixture
def fixed_threads(monkeypatch):
    """One torch thread count for a whole test: two trainings compared bit for bit agree only at one count, and the
    loader's governor (runtime.CoreShare) drops a thread in one of them if another process keeps a core busy (the
    other xdist worker's test, a server a previous test is stopping); 1 thread against 2 differs by ~1e-7 a step."""
    import torch

    from library.runtime import THREADS_ENV

    monkeypatch.setenv(THREADS_ENV, str(torch.get_num_threads()))


# The files whose tests read the smoke campaign (the suite's longest fixture, ~4 minutes): under pytest-xdist they
# run on one worker, so the campaign runs once; every other file goes to a worker whole, so its module fixtures
# run once. (xdist's own `--dist loadgroup` cannot group them: with pytest 9.2 it leaves the tests' ids unchanged.)
SMOKE_READERS = {"test_campaign.py", "test_finetune_job.py", "test_mlflow_ui.py", "test_study_jobs.py",
                 "test_tune_job.py"}


def pytest_collection_modifyitems(config, items):
    """The smoke campaign's readers first (the longest group starts first), each listed in SMOKE_READERS; whichever
    of them runs first also runs the campaign (~4 minutes alone, ~5.5 beside the other worker), so each has 20."""
    readers = [item for item in items if "smoke_campaign" in item.fixturenames]
    unlisted = {item.path.name for item in readers} - SMOKE_READERS
    if unlisted:
        raise pytest.UsageError(f"{sorted(unlisted)} read the smoke campaign: add them to conftest.SMOKE_READERS")
    for item in readers:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1200))
    items.sort(key=lambda item: item.path.name not in SMOKE_READERS)  # stable: the files' order otherwise


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "smoke_campaign" if Path(file).name in SMOKE_READERS else file

    return ByFile(config, log)
