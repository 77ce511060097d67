"""The shared `__main__` of every job: parse `--key=value` into the job's config, apply `--smoke-test`'s small
settings, print a banner with the config, run `main(cfg)`, and turn the expected failures (bad config, missing
data, unreachable tracking, a refused file) into one clear line on stderr and exit status 2 instead of a traceback,
and an interrupt (Ctrl-C, SIGTERM) into one line and exit status 130."""
from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from .cluster import stop_on_sigterm
from .config import WIDTH, Config, ConfigError, describe, override, parse_argv
from .data import DatasetCorruptError, DatasetNotFoundError
from .runtime import UnreadableFileError, collect_after_imports, git_sha, keep_freed_memory
from .model_store import ModelNotRegisteredError
from .tracking import TrackingUnavailableError, tracking_uri

C = TypeVar("C")
EXPECTED_ERRORS = (ConfigError, DatasetCorruptError, DatasetNotFoundError, ModelNotRegisteredError,
                   TrackingUnavailableError, UnreadableFileError)


def parse_job_config(cls: type[C], argv: Sequence[str], smoke: Mapping[str, Any] | None = None,
                     usage: str | None = None) -> C:
    """Defaults, then `smoke` when `--smoke-test` is given, then the user's own overrides (which win); the
    result passes its `check_final()`. `--help` prints `usage` (the job's docstring), every option, and what
    `--smoke-test` sets."""
    if "--help" in argv or "-h" in argv:
        parts = [inspect.cleandoc(usage)] if usage else []
        parts.append(describe(cls))
        if smoke:
            parts.append(textwrap.fill("--smoke-test sets " + ", ".join(f"{k}={v!r}" for k, v in smoke.items()), WIDTH))
        try:
            print("\n\n".join(parts), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader left; point stdout at devnull so exit does not fail too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    given = parse_argv(argv)
    cfg = cls()
    if smoke and str(given.get("smoke_test", False)).lower() in ("true", "1", "yes", "on"):
        cfg = override(cfg, smoke)
    cfg = override(cfg, given)
    if isinstance(cfg, Config):
        cfg.check_final()
    return cfg


def changed_settings(cfg: Any) -> dict[str, Any]:
    """The fields of `cfg` that differ from its class's defaults (a `--smoke-test`'s and the user's overrides)."""
    defaults = type(cfg)()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(defaults, f.name)}


def banner(title: str, cfg: Any) -> None:
    """The dino habit in a few lines: what runs, which code, where its results go, and every setting that is not
    the default (MLflow records the full config with each run)."""
    print(f"==== {title} · git {git_sha()[:12]} ====")
    changed = [f"{key}={value!r}" for key, value in sorted(changed_settings(cfg).items())]
    print("settings: " + (", ".join(v if len(v) <= 120 else v[:117] + "..." for v in changed) or "the defaults")
          + " (--help lists them all)")
    where = f"results: MLflow store {tracking_uri()}"
    if hasattr(cfg, "experiment_path"):  # sweeps and studies
        where += f", Tune state {cfg.experiment_path()}"
    print(where)
    sys.stdout.flush()


def run_job(main: Callable[[C], Any], cls: type[C], smoke: Mapping[str, Any] | None = None,
            argv: Sequence[str] | None = None, resolve: Callable[[C], C] | None = None) -> Any:
    """Parse the job's config (`resolve` then fills in what depends on the machine), print the banner, run
    `main`; the expected failures end in one line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    collect_after_imports()  # the job's imports are done (its header paused the collector for them)
    stop_on_sigterm()
    keep_freed_memory()  # every path of every job: training, extraction, attacks, evaluation (see runtime.py)
    try:
        job = sys.modules[main.__module__]
        cfg = parse_job_config(cls, argv, smoke, usage=job.__doc__)
        cfg = resolve(cfg) if resolve is not None else cfg
        banner(Path(getattr(job, "__file__", None) or "job").name, cfg)  # none under `python -c`
        return main(cfg)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM re-sent as SIGINT; as an exit, it also skips Ray's excepthook,
        # which would report the exception to the cluster (a GCS that is stopping holds the driver there)
        print("interrupted (Ctrl-C or SIGTERM) before the job finished; the MLflow runs it had open are marked "
              "KILLED", file=sys.stderr)
        raise SystemExit(130) from None
