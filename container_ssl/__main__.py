"""``python -m container_ssl`` is the same as the ``container-ssl`` console script (torchrun uses it)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
