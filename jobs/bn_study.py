"""BatchNorm study (A1 vs A2, A10a): the Mish CNN without and with BatchNorm between its hidden layers, over
several seeds, as a Ray Tune grid.

    python jobs/bn_study.py                               # 2 variants × 3 seeds, 15 epochs each
    python jobs/bn_study.py --smoke-test                  # tiny data, one epoch: under a minute on a CPU
    python jobs/bn_study.py --epochs=5 --seeds=[0,1,2,3]
    ray job submit --working-dir . -- python jobs/bn_study.py

MLflow: a parent run `bn_study` with one child per (variant, seed), and in the parent the training loss per
epoch of both variants on one plot (mean and min–max band over seeds), the test-accuracy tables, both variants'
first-layer filters, the weight init of each (params variant.<name>.init), and A10a's numerical check that a
bias before BatchNorm changes neither the output nor the other gradients (a10a_bias_before_bn.json).
Interrupted? The same command resumes it.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402

from library.train.bias_before_bn import bias_before_bn_check  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import project  # noqa: E402
from library.search.study import StudyJobConfig, run_study_job, smoke_settings  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class JobConfig(StudyJobConfig):
    name: str = "bn_study"
    model: str = "mish_cnn"  # the variants set it: mish_cnn and mish_cnn_bn


DESCRIPTION = ("A1 vs A2: the Mish CNN without and with BatchNorm after each hidden conv (those convs then carry "
               "no bias: A10a), same training, several seeds; trials are trained to the end and tested once each. "
               "A10a's check (a10a_bias_before_bn.json): with a random bias added before every BatchNorm, the "
               "train-mode logits and the other weights' gradients differ only by float64 rounding, and dL/db = 0.")


def variants(cfg: JobConfig) -> dict[str, TrainConfig]:
    base = project(cfg, TrainConfig)
    return {"no_bn": dataclasses.replace(base, model="mish_cnn"), "bn": dataclasses.replace(base, model="mish_cnn_bn")}


def report(parent: str, table, space, data) -> None:
    client = mlflow.MlflowClient()
    check = bias_before_bn_check()
    client.log_dict(parent, check, "a10a_bias_before_bn.json")
    for key, value in check.items():
        client.log_metric(parent, f"a10a.{key}", value)
    print(f"A10a: bias before BN changes the logits by at most {check['max_abs_logit_diff']:.1e} and the other "
          f"gradients by {check['max_abs_grad_diff']:.1e}; |dL/db| <= {check['max_abs_bias_grad']:.1e}")


def main(cfg: JobConfig) -> dict:
    return run_study_job(cfg, variants(cfg), DESCRIPTION, report)


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=smoke_settings("bn_study"))
