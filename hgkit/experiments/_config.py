"""What the experiments' frozen configs share: the checks of their fields. Each error names the field, what it
needs and what came, so a bad ``--set FIELD=VALUE`` on the command line says what to fix.

Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     n_train: int = 100
    ...     lr: float = 0.1
    ...     seeds: tuple = (0,)
    ...     def __post_init__(self):
    ...         check_positive_ints(self, ("n_train",))
    ...         check_split_sizes(self, ("n_train",))
    ...         check_positive_numbers(self, ("lr",))
    ...         check_seeds(self)
    >>> Config(n_train=6000)
    Traceback (most recent call last):
    ...
    ValueError: Config.n_train must be at most 5000 (the packaged split); got 6000
    >>> Config(lr=0)
    Traceback (most recent call last):
    ...
    ValueError: Config.lr must be a positive number; got 0
"""

from __future__ import annotations

from .._checks import positive_int, positive_number
from ._data import SIZES


def check_positive_ints(config, names) -> None:
    """Every field in ``names`` is a positive int."""
    for name in names:
        value = getattr(config, name)
        if not positive_int(value):
            raise ValueError(f"Config.{name} must be a positive int; got {value!r}")


def check_positive_numbers(config, names) -> None:
    """Every field in ``names`` is a number greater than 0."""
    for name in names:
        value = getattr(config, name)
        if not positive_number(value):
            raise ValueError(f"Config.{name} must be a positive number; got {value!r}")


def check_split_sizes(config, names) -> None:
    """Every field in ``names`` (``n_train``, ``n_val``, ``n_test``) asks for at most the packaged MNIST set's size."""
    for name in names:
        value = getattr(config, name)
        if value > SIZES[name]:
            raise ValueError(f"Config.{name} must be at most {SIZES[name]} (the packaged split); got {value}")


def check_seeds(config) -> None:
    """``config.seeds`` is a non-empty tuple of ints."""
    if not config.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in config.seeds):
        raise ValueError(f"Config.seeds must be a non-empty tuple of ints; got {config.seeds!r}")
