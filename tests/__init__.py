"""Edge Stream's tests, a package: every test and helper imports by its full name
(`from tests import servers`, `from tests.e2e.harness import GatewayProcess`).

A library that installs a top-level `tests` package into site-packages (gmqtt, which the
gateway once used, did) cannot shadow this one: pytest puts the repository first on
`sys.path` (`pythonpath = ["."]` in pyproject.toml) and bench/ scripts do the same.
Layers are pytest markers, one per test file (`unit`, `integration`, `e2e`);
tests/conftest.py refuses a test without exactly one.
"""
