"""`python -m qzhou_jax.synthesize`: the command is qzhou_jax/cli/synthesize.py (this path kept as an alias for one release)."""
from qzhou_jax.cli.synthesize import main

if __name__ == "__main__":
    main()
