"""``recall.errors``: the public name of recall's typed errors (design.md: "Errors are typed
(``recall.errors.*``)"). They are defined once, in :mod:`recall.core.errors`, the base layer
that every other layer may import; this module only re-exports them under the public name."""

from recall.core.errors import *  # noqa: F403
from recall.core.errors import __all__  # noqa: F401
