"""Edge Stream's tests, a package: every test and helper imports by its full name
(`from tests import servers`, `from tests.e2e.harness import GatewayProcess`).

gmqtt installs a top-level `tests` package into site-packages; this one wins because pytest
puts the repository first on `sys.path` (`pythonpath = ["."]` in pyproject.toml) and bench/
scripts do the same. Layers are pytest markers, one per test file (`unit`, `integration`,
`e2e`); tests/conftest.py refuses a test without exactly one.
"""
