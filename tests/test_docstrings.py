"""The examples in the docstrings of the main entry points run and print what they show (doctest).

Each module's examples run in one doctest pass on tiny float64 models; a broken example fails here with
doctest's report of the expected and the actual output. A second test keeps every main entry point
documented by an example, so an example cannot disappear unnoticed.
"""
from __future__ import annotations

import doctest
import importlib
import io

import pytest

import lamda_ext

MODULES = ["lamda_ext.derivs", "lamda_ext.curvature", "lamda_ext.directions", "lamda_ext.hvp",
           "lamda_ext.batches", "lamda_ext.hessian.operator", "lamda_ext.hessian.eigs", "lamda_ext.hessian.trace",
           "lamda_ext.hessian.density", "lamda_ext.hessian.diagonal"]

ENTRY_POINTS = [lamda_ext.directional_derivs, lamda_ext.plan, lamda_ext.curvature_rate, lamda_ext.random_directions,
                lamda_ext.hvp, lamda_ext.HessianOperator, lamda_ext.hessian_eigs, lamda_ext.hessian_trace,
                lamda_ext.hessian_density, lamda_ext.hessian_diagonal, importlib.import_module("lamda_ext.batches")]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}:\n{out.getvalue()}"


@pytest.mark.parametrize("obj", ENTRY_POINTS, ids=lambda o: getattr(o, "__name__", str(o)))
def test_entry_point_has_an_example(obj):
    tests = doctest.DocTestFinder(recurse=False).find(obj)
    assert tests and tests[0].examples, f"{obj.__name__}: its docstring has no >>> example"
    assert "Example:" in obj.__doc__, f"{obj.__name__}: the example is not in a Google 'Example:' section"
