"""Checks shared by the experiments' frozen configs: each error names the field, what it needs and what came."""

from __future__ import annotations

from ..hypergrad._common import positive_int


def check_positive_ints(config, names) -> None:
    """Every field in ``names`` is a positive int."""
    for name in names:
        value = getattr(config, name)
        if not positive_int(value):
            raise ValueError(f"Config.{name} must be a positive int; got {value!r}")


def check_seeds(config) -> None:
    """``config.seeds`` is a non-empty tuple of ints."""
    if not config.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in config.seeds):
        raise ValueError(f"Config.seeds must be a non-empty tuple of ints; got {config.seeds!r}")
