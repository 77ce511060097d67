import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from conftest import REPO
from library.cli import parse_job_config
from library.config import ConfigError, coerce, describe, field_docs, flatten, override, parse_argv


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    epochs: int = 3
    name: str = "a"
    flag: bool = False
    mode: Literal["x", "y"] = "x"
    widths: tuple[int, ...] = (1, 2)
    kw: dict = field(default_factory=dict)
    limit: Optional[int] = None


@dataclass(frozen=True)
class Documented:
    mode: Literal["fast", "slow"] = "fast"  # how it runs: fast skips the
    # second pass
    plain: int = 1
    # a note above the next field, which is no field's description
    later: int = 2  # after a comment of its own line

    def check(self) -> int:
        return self.later  # a comment in a method: no field's either


@dataclass(frozen=True)
class Redocumented(Documented):
    plain: int = 3  # documented here


def test_help_gives_each_option_its_comment_its_choices_and_the_jobs_usage(capsys):
    assert field_docs(Documented) == {"mode": "how it runs: fast skips the second pass", "plain": "",
                                      "later": "after a comment of its own line"}
    assert field_docs(Redocumented)["plain"] == "documented here"  # the subclass's comment wins
    text = describe(Redocumented)
    assert "fast | slow" in text and "default 3" in text and "documented here" in text
    with pytest.raises(SystemExit) as stop:
        parse_job_config(Redocumented, ["--help"], usage="\n    What the job does.\n\n        python job.py\n")
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith("What the job does.\n\n    python job.py\n\n")
    assert out.endswith(text + "\n")
    with pytest.raises(SystemExit):
        parse_job_config(Redocumented, ["--help"], smoke={"mode": "slow", "later": 0})
    assert capsys.readouterr().out.endswith(text + "\n\n--smoke-test sets mode='slow', later=0\n")


def test_help_piped_into_a_reader_that_leaves_early_exits_cleanly():
    """`--help | head`: the pipe closes before the help is written, and the job still exits 0 without a traceback."""
    code = ("import dataclasses\nfrom library.cli import parse_job_config\n"
            "parse_job_config(dataclasses.make_dataclass('Job', [('epochs', int, 1)]), ['--help'], usage='x\\n' * 20000)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before reading anything
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "BrokenPipeError" not in err, err


def test_values_are_converted_to_the_annotated_types():
    cfg = override(Cfg(), parse_argv(["--lr=0.5", "--epochs", "7", "--flag", "--mode=y", "--widths=[3,4,5]",
                                      "--limit=none", "--name=b"]))
    assert cfg == Cfg(lr=0.5, epochs=7, name="b", flag=True, mode="y", widths=(3, 4, 5), limit=None)
    assert isinstance(cfg.lr, float) and isinstance(cfg.epochs, int) and isinstance(cfg.widths, tuple)


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'.*Did you mean 'lr'"):
        override(Cfg(), {"lrr": "1"})


@pytest.mark.parametrize("key, value", [("epochs", "2.5"), ("epochs", "ten"), ("lr", "fast"), ("flag", "maybe"),
                                        ("mode", "z"), ("widths", "[1, 'a']")])
def test_wrong_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        override(Cfg(), {key: value})


def test_dotted_keys_fill_dict_fields_and_only_dict_fields():
    cfg = override(Cfg(), {"kw.depth": "3", "kw.norm": "bn", "kw.widths": "[8, 16]"})
    assert cfg.kw == {"depth": 3, "norm": "bn", "widths": [8, 16]}
    assert Cfg().kw == {}  # the default is not mutated
    with pytest.raises(ConfigError, match="not a mapping"):
        override(Cfg(), {"lr.x": "1"})


def test_dashes_become_underscores_and_positional_arguments_are_refused():
    assert parse_argv(["--smoke-test"]) == {"smoke_test": True}
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_argv(["oops"])


def test_flatten_uses_dotted_names():
    assert flatten(Cfg(kw={"a": 1, "b": {"c": 2}}))["kw.b.c"] == 2


def test_smoke_settings_apply_first_and_user_overrides_win():
    @dataclass(frozen=True)
    class Job:
        epochs: int = 10
        size: int = 0
        smoke_test: bool = False

    smoke = {"epochs": 1, "size": 5}
    assert parse_job_config(Job, ["--smoke-test"], smoke) == Job(1, 5, True)
    assert parse_job_config(Job, ["--smoke-test", "--epochs=3"], smoke) == Job(3, 5, True)
    assert parse_job_config(Job, ["--epochs=3"], smoke) == Job(3, 0, False)


@pytest.mark.parametrize("text", ["[mnist_a,mnist_b]", "mnist_a,mnist_b", "['mnist_a', 'mnist_b']", "(mnist_a, mnist_b)"])
def test_sequences_of_bare_words_parse_as_the_shell_leaves_them(text):
    assert coerce("models", text, tuple[str, ...]) == ("mnist_a", "mnist_b")


def _job_configs():
    """Every job's JobConfig, imported from its script (the scripts guard their __main__)."""
    import importlib.util
    import sys

    from conftest import REPO

    configs = {}
    for path in sorted((REPO / "jobs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve the string annotations through it
        spec.loader.exec_module(module)
        configs[path.stem] = module.JobConfig
    return configs


def test_every_job_config_runs_the_checks_of_all_its_bases():
    """One base class, checks chained through super(): a check added to DataOptions or TrainConfig is run by
    every job config built on it, however many bases it has."""
    from library.config import Config
    from library.data.options import DataOptions
    from library.search.sweep import SweepOptions
    from library.train.recipe import TrainConfig

    bad = {DataOptions: {"val_size": -1}, TrainConfig: {"lr": 0.0}, SweepOptions: {"num_samples": 0}}
    checked = 0
    for name, cls in _job_configs().items():
        assert issubclass(cls, Config), name
        cfg = cls()
        for base, change in bad.items():
            if issubclass(cls, base):
                with pytest.raises(ConfigError, match=next(iter(change))):
                    override(cfg, change)
                checked += 1
    assert checked >= 20


def test_dotted_keys_reach_into_nested_mappings_without_touching_the_defaults():
    @dataclass(frozen=True)
    class Spaced:
        space: dict = field(default_factory=lambda: {"model": {"a": {"k": [3]}, "b": {}}, "lr": 1})

    cfg = override(Spaced(), parse_argv(["--space.model.a.k=[5]", "--space.model.b.w=[8,16]", "--space.lr=2"]))
    assert cfg.space == {"model": {"a": {"k": [5]}, "b": {"w": [8, 16]}}, "lr": 2}
    assert Spaced().space["model"]["a"] == {"k": [3]}  # the default is not mutated
    with pytest.raises(ConfigError, match="'lr' holds 1, not a mapping"):
        override(Spaced(), {"space.lr.x": 3})


def test_workers_get_the_allocator_setting_in_their_environment_unless_turned_off(monkeypatch):
    from library.runtime import malloc_env

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("CV_GLIBC_MALLOC_TUNING", raising=False)
    ours = malloc_env()["GLIBC_TUNABLES"]
    assert ours == "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # a user's own setting is kept, not overridden
    assert malloc_env()["GLIBC_TUNABLES"] == ("glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
                                              "glibc.malloc.trim_threshold=1073741824")
    monkeypatch.setenv("GLIBC_TUNABLES", ours)  # and not repeated when it is already there
    assert malloc_env()["GLIBC_TUNABLES"] == ours
    monkeypatch.setenv("CV_GLIBC_MALLOC_TUNING", "0")
    assert malloc_env() == {}


def test_a_job_loads_its_imports_without_collecting_and_collects_again_once_run_job_starts():
    # the real script as `python jobs/train_cnn.py --help` runs it, then the collector's state once run_job is done
    code = ("import gc, runpy, sys\n"
            "sys.argv = ['jobs/train_cnn.py', '--help']\n"
            "try:\n    runpy.run_path('jobs/train_cnn.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sum(s['collections'] for s in gc.get_stats()), gc.isenabled(), gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    collections, enabled, frozen = out.stdout.split()[-3:]
    assert int(collections) < 100  # with the collector on throughout, importing torch and MLflow makes ~1,200
    assert enabled == "True" and int(frozen) > 100_000  # the imported objects: out of every later collection
