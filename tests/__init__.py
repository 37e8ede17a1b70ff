"""The test suite as a regular package: `from tests.conftest import ...` must find this folder, not
another distribution's top-level `tests` package (torch-fidelity 0.4.0 installs one into site-packages)."""
