"""`python -m qzhou_jax.export`: the command is qzhou_jax/cli/export.py (this path kept as an alias for one release)."""
from qzhou_jax.cli.export import main

if __name__ == "__main__":
    main()
