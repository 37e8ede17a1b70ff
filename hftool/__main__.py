"""`python -m hftool`, so `accelerate launch -m hftool ...` and `torchrun -m hftool ...` work."""

from hftool.cli import main

if __name__ == "__main__":
    main()
