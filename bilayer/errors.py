"""Errors that reach users as one clear line (the CLI prints them and exits with code 2)."""


class InputError(ValueError):
    """Bad user input: a file that cannot be read, wrong shapes, an unknown config key...

    The message must name the offending file or value and the problem, on one line.
    """


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed faithfully here (its weights or packages are missing); the
    message says why, and the evaluation reports null with that reason."""


class SkipInput(InputError):
    """An input that yields no data (an undecodable file, no face in it, ...); `reason` is the one-line
    explanation without the path. A run records it and goes on with the next input."""

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason

