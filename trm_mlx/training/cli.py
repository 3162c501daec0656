"""``trm-train``: the original ``python pretrain.py`` command line (Hydra, same keys, same ``+key=`` rules).

With no arguments it trains the small built-in Sudoku demo (``preset=demo``), generating the data on first use.
"""

import sys

import hydra
from omegaconf import DictConfig

from trm_mlx.training.config import CONFIG_NAME, from_hydra, hydra_config_path

DEMO_OVERRIDE = "preset=demo"


@hydra.main(config_path=hydra_config_path(), config_name=CONFIG_NAME, version_base=None)
def launch(hydra_config: DictConfig) -> None:
    from trm_mlx.training.trainer import train  # MLX and the model load after parsing: --help stays instant

    train(from_hydra(hydra_config))


def main() -> None:
    if len(sys.argv) == 1:
        sys.argv.append(DEMO_OVERRIDE)
    launch()


if __name__ == "__main__":
    main()
