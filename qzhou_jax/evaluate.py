"""`python -m qzhou_jax.evaluate`: the command is qzhou_jax/cli/evaluate.py (this path kept as an alias for one release)."""
from qzhou_jax.cli.evaluate import main

if __name__ == "__main__":
    main()
