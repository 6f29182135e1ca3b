"""Univariate Taylor mode: series, the op rules, the engine and the quadratic forms."""

