"""`python -m qzhou_jax.plan`: the command is qzhou_jax/cli/plan.py, the planner qzhou_jax/train/plan.py (this path kept
as an alias for one release)."""
from qzhou_jax.cli.plan import main

if __name__ == "__main__":
    main()
