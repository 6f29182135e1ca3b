"""The ``spectrum`` study (registers itself with :mod:`lamda.studies`)."""
from . import run  # noqa: F401
