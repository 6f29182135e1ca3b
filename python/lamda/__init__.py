"""lamda: the research layer of lamda_ext (data, models, regularizers, trainers, landscape tools, experiments)."""
__version__ = "0.1.0"
