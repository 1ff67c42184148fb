"""The ``shapes:FAMILY:N[:SEED[:reply]]`` data source: N generated ShapesWorld samples of one family
(:func:`smartedit.shapes.world.training_samples`; families ``simple``, ``perception``, ``understanding``,
``reasoning``, ``caption``, ``chat``, ``instruction``, ``grounded_instruction``, ``explicit_instruction``), sample
seed ``SEED`` (default 0); ``reply``: each edit prompt's reply writes the instruction said plainly before its
``<img_i>`` tokens.

The trainer finds it through the ``smartedit.data_sources`` entry point this package declares (``setup.py``), so
``data.sources.NAME = "shapes:simple:32"`` works in any experiment config; see :mod:`smartedit.data.sources`.
"""

from __future__ import annotations

from ..data.schema import Sample

__all__ = ["KIND", "open_shapes_source"]

KIND = "shapes"


def open_shapes_source(spec: str, base_dir: str = ".") -> list[Sample]:
    """``shapes:FAMILY:N[:SEED[:reply]]`` → the samples (``base_dir`` is not used: nothing is read from disk)."""
    from .world import training_samples

    parts = spec.split(":")
    if len(parts) not in (3, 4, 5) or parts[0] != KIND or (len(parts) == 5 and parts[4] != "reply"):
        raise ValueError(f"ShapesWorld source {spec!r} must look like shapes:FAMILY:N, shapes:FAMILY:N:SEED or "
                         f"shapes:FAMILY:N:SEED:reply")
    seed = int(parts[3]) if len(parts) >= 4 else 0
    return list(training_samples(parts[1], int(parts[2]), seed=seed, reply=len(parts) == 5))
