"""Search spaces over compression policies: data that validates, round-trips through
JSON and turns a choice of values into a Policy (see autocompress.search_spaces.space), the
registry of knobs a dimension can vary (autocompress.search_spaces.knobs), presets
built from a model's layers and pruning groups (autocompress.search_spaces.presets), and their
translation into Optuna distributions (autocompress.search_spaces.to_optuna).
"""

from autocompress.search_spaces.knobs import KNOBS, Knob, register_knob
from autocompress.search_spaces.presets import PRESETS, build_space
from autocompress.search_spaces.space import Dimension, SearchSpace, SpaceError

__all__ = [
    "KNOBS",
    "PRESETS",
    "Dimension",
    "Knob",
    "SearchSpace",
    "SpaceError",
    "build_space",
    "register_knob",
]
