"""python -m otadet MODE key=value ... (the same as the `otadet` command)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
