"""The original's default config and README experiment command lines, with the values each must resolve to."""

import shlex

# The original's defaults (spec 1.2, 1.3), written out by hand.
TRM_ARCH = {
    "name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
    "halt_exploration_prob": 0.1,
    "halt_max_steps": 16,
    "H_cycles": 3,
    "L_cycles": 6,
    "H_layers": 0,
    "L_layers": 2,
    "hidden_size": 512,
    "num_heads": 8,
    "expansion": 4,
    "puzzle_emb_ndim": 512,
    "pos_encodings": "rope",
    "forward_dtype": "bfloat16",
    "mlp_t": False,
    "puzzle_emb_len": 16,
    "no_ACT_continue": True,
}
DEFAULTS = {
    "arch": TRM_ARCH,
    "data_paths": ["data/arc-aug-1000"],
    "data_paths_test": [],
    "evaluators": [{"name": "arc@ARC"}],
    "global_batch_size": 768,
    "epochs": 100000,
    "lr": 1e-4,
    "lr_min_ratio": 1.0,
    "lr_warmup_steps": 2000,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "puzzle_emb_lr": 1e-2,
    "puzzle_emb_weight_decay": 0.1,
    "project_name": None,
    "run_name": None,
    "load_checkpoint": None,
    "checkpoint_path": None,
    "seed": 0,
    "checkpoint_every_eval": True,
    "eval_interval": 10000,
    "min_eval_interval": 0,
    "eval_save_outputs": [],
    "ema": False,
    "ema_rate": 0.999,
    "freeze_weights": False,
    # trm-mlx additions
    "benchmark": None,
    "resume": None,
    "max_steps": None,
    "max_minutes": None,
    "on_nan_loss": "stop",
    "wandb_mode": None,
    "device": "auto",
    "kernels": "auto",
    "recompute": "auto",
    "memory_limit": None,
    "cpu_lanes": "auto",
}

SUDOKU_MAZE = {
    "evaluators": [],
    "epochs": 50000,
    "eval_interval": 5000,
    "lr": 1e-4,
    "puzzle_emb_lr": 1e-4,
    "weight_decay": 1.0,
    "puzzle_emb_weight_decay": 1.0,
    "ema": True,
}

# The README's experiment commands, `python pretrain.py` / `torchrun ... pretrain.py` replaced by `trm-train`,
# `${run_name}` expanded. Each with the values it must resolve to (changes from DEFAULTS).
README_COMMANDS = {
    "sudoku_mlp": (
        """trm-train \\
arch=trm \\
data_paths="[data/sudoku-extreme-1k-aug-1000]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
arch.mlp_t=True arch.pos_encodings=none \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=6 \\
+run_name=pretrain_mlp_t_sudoku ema=True""",
        {
            **SUDOKU_MAZE,
            "data_paths": ["data/sudoku-extreme-1k-aug-1000"],
            "run_name": "pretrain_mlp_t_sudoku",
            "arch": {**TRM_ARCH, "mlp_t": True, "pos_encodings": "none"},
        },
    ),
    "sudoku_att": (
        """trm-train \\
arch=trm \\
data_paths="[data/sudoku-extreme-1k-aug-1000]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=6 \\
+run_name=pretrain_att_sudoku ema=True""",
        {**SUDOKU_MAZE, "data_paths": ["data/sudoku-extreme-1k-aug-1000"], "run_name": "pretrain_att_sudoku"},
    ),
    "maze": (
        """trm-train \\
arch=trm \\
data_paths="[data/maze-30x30-hard-1k]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=pretrain_att_maze30x30 ema=True""",
        {
            **SUDOKU_MAZE,
            "data_paths": ["data/maze-30x30-hard-1k"],
            "run_name": "pretrain_att_maze30x30",
            "arch": {**TRM_ARCH, "L_cycles": 4},
        },
    ),
    "maze_1gpu": (
        """trm-train \\
arch=trm \\
data_paths="[data/maze-30x30-hard-1k]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 global_batch_size=128 \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=pretrain_att_maze30x30_1gpu ema=True""",
        {
            **SUDOKU_MAZE,
            "data_paths": ["data/maze-30x30-hard-1k"],
            "global_batch_size": 128,
            "run_name": "pretrain_att_maze30x30_1gpu",
            "arch": {**TRM_ARCH, "L_cycles": 4},
        },
    ),
    "arc1": (
        """trm-train \\
arch=trm \\
data_paths="[data/arc1concept-aug-1000]" \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=pretrain_att_arc1concept_4 ema=True""",
        {
            "data_paths": ["data/arc1concept-aug-1000"],
            "run_name": "pretrain_att_arc1concept_4",
            "ema": True,
            "arch": {**TRM_ARCH, "L_cycles": 4},
        },
    ),
    "arc2": (
        """trm-train \\
arch=trm \\
data_paths="[data/arc2concept-aug-1000]" \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=pretrain_att_arc2concept_4 ema=True""",
        {
            "data_paths": ["data/arc2concept-aug-1000"],
            "run_name": "pretrain_att_arc2concept_4",
            "ema": True,
            "arch": {**TRM_ARCH, "L_cycles": 4},
        },
    ),
}


def overrides(command: str) -> list[str]:
    """What the shell hands trm-train: continuation lines joined, quotes removed, program name dropped."""
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "trm-train"
    return argv[1:]


