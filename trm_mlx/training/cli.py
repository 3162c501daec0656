"""``trm-train``: the original ``python pretrain.py`` command line (Hydra, same keys, same ``+key=`` rules).

With no arguments it trains the small built-in Sudoku demo (``preset=demo``), generating the data on first use.
A mistake in the input (a config value, a missing or malformed file) ends in one line naming it
(``TRM_MLX_FULL_ERROR=1``: the traceback).
Under ``mlx.launch -n N`` it trains data-parallel on N ranks (docs/DISTRIBUTED.md).
"""

import sys

import hydra
from omegaconf import DictConfig

from trm_mlx.blas import load_fast_blas
from trm_mlx.training.config import CONFIG_NAME, from_hydra, hydra_config_path

DEMO_OVERRIDE = "preset=demo"


@hydra.main(config_path=hydra_config_path(), config_name=CONFIG_NAME, version_base=None)
def launch(hydra_config: DictConfig) -> None:
    # MLX and the model load after parsing: --help stays instant.
    from trm_mlx.training.distributed import DistributedError
    from trm_mlx.training.trainer import train
    from trm_mlx.user_errors import one_line_errors

    try:
        with one_line_errors("trm-train"):
            train(from_hydra(hydra_config))
    except DistributedError as e:  # a rank stopped: say so in one line rather than with a traceback from MLX
        sys.exit(f"trm-train: {e}")


def main() -> None:
    load_fast_blas()  # first: MLX binds its BLAS when it loads
    if len(sys.argv) == 1:
        sys.argv.append(DEMO_OVERRIDE)
    launch()


if __name__ == "__main__":
    main()
