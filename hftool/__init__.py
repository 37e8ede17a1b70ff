"""hftool: fine-tune Hugging Face models with one CLI and one training loop."""

import sys

__version__ = "0.1.0"

# True in the `hftool` command's own process (set by hftool.cli.main), where hftool may import
# libraries without parts it never uses (see hftool.metrics). False for library use.
_cli_process = False


def _register_models() -> None:
    import hftool.dcgan  # noqa: F401  (importing them registers them with transformers' Auto classes)
    import hftool.forecaster  # noqa: F401


class _AfterTransformers:
    """Registers hftool's forecaster and DCGAN generator with transformers' Auto classes as soon as
    transformers is imported, so `import hftool` is all it takes for `AutoModel.from_pretrained(RUN)`
    to load an lstm-forecast or gan run (no remote code). Importing transformers and torch here
    instead would cost every `hftool --help` seconds; Python has no other hook that runs after an
    import."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                _register_models()

            spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _AfterTransformers())
