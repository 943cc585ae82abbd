"""`python -m umx_tune …` is `umx-tune …` (the MLproject entry points use it)."""

from umx_tune.cli import main

if __name__ == "__main__":
    main()
