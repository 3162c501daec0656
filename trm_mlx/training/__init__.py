"""Training: configs, optimizers, LR schedule and the trm-train loop."""
