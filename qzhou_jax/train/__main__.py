"""`python -m qzhou_jax.train`: the command is qzhou_jax/cli/train.py."""
from qzhou_jax.cli.train import main

if __name__ == "__main__":
    main()
