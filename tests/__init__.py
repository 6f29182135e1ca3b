"""The test suite (a package: helpers are imported as ``tests._helpers`` and ``tests._models``)."""
