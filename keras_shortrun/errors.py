"""Exceptions that name what went wrong (importable without Keras, so the CLI can catch them cheaply)."""


class TrainingDiverged(RuntimeError):
    """Training stopped because it diverged; the model holds the weights of the last good state."""
