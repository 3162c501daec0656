"""Convert a checkpoint between the native format and the original PyTorch format.

    python -m scripts.convert_checkpoint checkpoints/run/step_1000 out/step_1000 --to original
    python -m scripts.convert_checkpoint original/step_5000 out/model.safetensors --to native [--config all_config.yaml]

Original files get the `_orig_mod.` key prefix (as the original's compiled trainer writes them) unless
--no-compiled-prefix; writing them needs torch. docs/CHECKPOINTS.md describes both formats.
"""

import argparse
import sys

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # before MLX loads

import trm_mlx  # noqa: E402
from trm_mlx.checkpoint import read_yaml, save_native, save_original  # noqa: E402
from trm_mlx.user_errors import one_line_errors  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="native or original checkpoint file")
    parser.add_argument("target", help="file to write (atomically)")
    parser.add_argument("--to", choices=["native", "original"], required=True)
    parser.add_argument("--config", help="all_config.yaml for an original source (default: the one beside it)")
    parser.add_argument("--no-compiled-prefix", action="store_true", help="original keys without `_orig_mod.`")
    args = parser.parse_args(argv)

    with one_line_errors("convert_checkpoint"):
        config = read_yaml(args.config) if args.config else None  # a training config or an arch section
        model = trm_mlx.load(args.source, config=config)
        if args.to == "native":
            save_native(args.target, model)
        else:
            save_original(args.target, model, compiled_prefix=not args.no_compiled_prefix)
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
