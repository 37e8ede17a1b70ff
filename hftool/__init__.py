"""hftool: fine-tune Hugging Face models with one CLI and one training loop."""

__version__ = "0.1.0"
