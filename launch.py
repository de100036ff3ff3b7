"""keyspace entry point: `python launch.py [overrides]`, or `-m` for a sweep (see README)."""

import hydra
from omegaconf import DictConfig

from experiments.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from experiments.pipeline import run

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    run(cfg, hydra_cfg.runtime.output_dir, group=hydra_cfg.sweep.dir if sweep else None)


if __name__ == "__main__":
    main()
