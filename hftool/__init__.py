"""hftool: fine-tune Hugging Face models with one CLI and one training loop."""

__version__ = "0.1.0"

# True in the `hftool` command's own process (set by hftool.cli.main), where hftool may import
# libraries without parts it never uses (see hftool.metrics). False for library use.
_cli_process = False
