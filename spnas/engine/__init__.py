"""What every stage runs on: the trainer, evaluation, checkpoints, logs, costs, the search algorithms."""
