"""``python -m lamda …`` (what ``torchrun … -m lamda run <experiment>`` starts on every rank)."""
import sys

from .cli import main

sys.exit(main())
