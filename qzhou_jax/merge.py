"""`python -m qzhou_jax.merge`: the command is qzhou_jax/cli/merge.py (this path is the documented one, as for the
other root commands)."""
from qzhou_jax.cli.merge import main

if __name__ == "__main__":
    main()
