"""`python -m qzhou_jax.mine`: the command is qzhou_jax/cli/mine.py (this path kept as an alias for one release)."""
from qzhou_jax.cli.mine import main

if __name__ == "__main__":
    main()
