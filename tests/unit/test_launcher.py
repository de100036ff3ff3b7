"""Launch configuration without a cluster: the sbatch lines our `slurm` launcher produces, `local`, and the
experiment presets (each a multirun of the expected size).

The launcher tests instantiate the composed `hydra.launcher` node (hydra-submitit-launcher's own launcher
class) and call `launch` with `submitit.AutoExecutor` replaced by a recorder that feeds the parameters
through submitit's real executor and renders the sbatch file, so a parameter submitit would reject, or
one that does not reach an `#SBATCH` line, fails here.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from submitit.slurm import slurm as submitit_slurm

from experiments.aggregate import expected_jobs
from experiments.config import JobConfig, register_configs

from ..conftest import REPO

CONF = REPO / "conf"
ENV_VARS = ["PARTITION", "ACCOUNT", "QOS", "GPUS", "CPUS", "MEM_GB", "TIMEOUT_MIN", "ARRAY_PARALLELISM"]


def _compose(overrides: list[str], return_hydra_config: bool = True):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["paths.cache_dir=/tmp/x", *overrides],
                       return_hydra_config=return_hydra_config)


def _save_multirun_yaml(cfg, folder: Path, command_line_sweep: list[str] = ()) -> None:
    """What the sweeper saves as `multirun.yaml`; a command-line sweep (not composable here) joins the task."""
    container = OmegaConf.to_container(cfg)
    container["hydra"]["overrides"]["task"] += list(command_line_sweep)
    OmegaConf.save(OmegaConf.create(container), folder / "multirun.yaml")


class RecordingExecutor:
    """Stands in for `submitit.AutoExecutor`: the real executor's parameter handling, no submission."""

    instances: list[RecordingExecutor] = []
    real_class = submitit.AutoExecutor

    def __init__(self, folder: str, cluster: str, **kwargs) -> None:
        self.folder, self.cluster, self.init_kwargs = folder, cluster, kwargs
        self.real = self.real_class(folder=folder, cluster=cluster, **kwargs)
        self.n_jobs = 0
        RecordingExecutor.instances.append(self)

    def update_parameters(self, **params) -> None:
        self.update_kwargs = params
        self.real.update_parameters(**params)

    def map_array(self, function, *arguments) -> list:
        self.n_jobs = len(arguments[0])
        return []

    def sbatch_lines(self) -> set[str]:
        """The `#SBATCH` lines submitit would write for this array."""
        text = submitit_slurm._make_sbatch_string(command="python -u -m submitit.core._submit x", folder=self.folder,
                                                  map_count=self.n_jobs, **self.real._executor.parameters)
        return {line for line in text.splitlines() if line.startswith("#SBATCH")}


def _launch(monkeypatch, tmp_path: Path, overrides: list[str], n_jobs: int) -> RecordingExecutor:
    """Instantiate `hydra.launcher` from the composed config and launch `n_jobs` jobs into the recorder."""
    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun needed
    RecordingExecutor.instances.clear()
    cfg = _compose([f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=mock.MagicMock(), task_function=lambda _: None, config=cfg)
    with mock.patch.object(submitit, "AutoExecutor", RecordingExecutor):
        assert launcher.launch([[f"benchmark.seed={i}"] for i in range(n_jobs)], initial_job_idx=0) == []
    (executor,) = RecordingExecutor.instances
    return executor


@pytest.fixture
def no_slurm_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(f"KEYSPACE_SLURM_{name}", raising=False)
    return monkeypatch


def test_slurm_defaults_one_gpu_per_job(no_slurm_env, tmp_path):
    executor = _launch(no_slurm_env, tmp_path, ["hydra/launcher=slurm"], n_jobs=20)
    assert executor.cluster == "slurm"
    assert executor.init_kwargs == {"slurm_max_num_timeout": 3}  # requeue: resume under SLURM is tested
    assert executor.folder == f"{tmp_path / 'sweep'}/.submitit/%j"
    lines = executor.sbatch_lines()
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --time=240",
            "#SBATCH --job-name=keyspace", "#SBATCH --array=0-19%16", "#SBATCH --nodes=1",
            "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@120"} <= lines
    assert not [line for line in lines if line.split("=")[0].endswith(("--partition", "--account", "--qos"))]


def test_slurm_values_from_environment(no_slurm_env, tmp_path):
    values = {"PARTITION": "gpu", "ACCOUNT": "proj42", "QOS": "high", "GPUS": "2", "CPUS": "4", "MEM_GB": "32",
              "TIMEOUT_MIN": "30", "ARRAY_PARALLELISM": "3"}
    for name, value in values.items():
        no_slurm_env.setenv(f"KEYSPACE_SLURM_{name}", value)
    lines = _launch(no_slurm_env, tmp_path, ["hydra/launcher=slurm"], n_jobs=4).sbatch_lines()
    assert {"#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high", "#SBATCH --gpus-per-node=2",
            "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32GB", "#SBATCH --time=30", "#SBATCH --array=0-3%3"} <= lines


def test_command_line_beats_environment(no_slurm_env, tmp_path):
    no_slurm_env.setenv("KEYSPACE_SLURM_PARTITION", "gpu")
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
                 "hydra.launcher.mem_gb=2", "+hydra.launcher.additional_parameters.reservation=demo"]
    lines = _launch(no_slurm_env, tmp_path, overrides, n_jobs=2).sbatch_lines()
    assert {"#SBATCH --partition=debug", "#SBATCH --gpus-per-node=0", "#SBATCH --mem=2GB",
            "#SBATCH --reservation=demo", "#SBATCH --array=0-1%2"} <= lines


def test_local_launcher(monkeypatch, tmp_path):
    monkeypatch.delenv("KEYSPACE_LOCAL_TIMEOUT_MIN", raising=False)
    executor = _launch(monkeypatch, tmp_path, ["hydra/launcher=local"], n_jobs=2)
    assert executor.cluster == "local" and executor.n_jobs == 2
    assert executor.update_kwargs["timeout_min"] == 240 and executor.update_kwargs["name"] == "keyspace"


PRESETS = {"paper": 4, "kernel_ablation": 6, "metric_ablation": 5, "smoke": 2, "remedy": 64}


def test_every_preset_is_listed():
    assert sorted(PRESETS) == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(("preset", "n_jobs"), list(PRESETS.items()), ids=list(PRESETS))
def test_experiment_preset_is_a_typed_multirun(preset, n_jobs, tmp_path):
    cfg = _compose([f"experiment={preset}"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    _save_multirun_yaml(cfg, tmp_path)
    assert expected_jobs(tmp_path) == n_jobs
    assert isinstance(OmegaConf.to_object(_compose([f"experiment={preset}"], return_hydra_config=False)), JobConfig)


def test_paper_preset_is_the_papers_grid(tmp_path):
    cfg = _compose(["experiment=paper"])
    assert dict(cfg.hydra.sweeper.params) == {"model": "llava,qwen", "benchmark": "mmbench_cn,mmmu"}
    assert list(cfg.layer.positions) == ["early", "middle", "late"] and list(cfg.metric.names) == ["mmd2", "jsd"]
    assert cfg.kernel.name == "rbf"


def test_a_command_line_sweep_adds_to_a_preset(tmp_path):
    """`experiment=kernel_ablation model=tiny_llava,tiny_qwen`: 6 kernels x 2 models."""
    _save_multirun_yaml(_compose(["experiment=kernel_ablation"]), tmp_path, ["model=tiny_llava,tiny_qwen"])
    assert expected_jobs(tmp_path) == 12
