"""`python -m qzhou_jax.evaluate ...`: the evaluate CLI lives in qzhou_jax/eval/evaluate.py."""
from qzhou_jax.eval.evaluate import evaluate, main  # noqa: F401

if __name__ == "__main__":
    main()
