"""Overrides that shrink the fig3-pinwheel experiment to a run of seconds, shared by the CLI tests."""

# 80 training points, 20 steps (checkpoints at 10 and 20), a small evaluation
TINY = [
    "data.per_arm=20",
    "data.test_per_arm=10",
    "train.steps=20",
    "train.checkpoint_every=10",
    "eval.num_samples=200",
    "eval.posterior_draws=5",
    "eval.grid_size=16",
]
