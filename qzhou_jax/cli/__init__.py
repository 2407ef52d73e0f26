"""Every command line, one module each: a thin argparse `main(argv)` over functions the tests call, ending the one
way (cli_errors: one `error:` line, exit 2 for bad usage, 1 for a failed run; --debug shows the traceback).

train | plan | prepare | inspect | encode | export | evaluate | mteb_local | mine | synthesize | convert | merge.
Run as `python -m qzhou_jax.<command>` (train, plan, encode, export, evaluate, mine, synthesize, merge) or at their
documented module paths (`qzhou_jax.data.prepare`, `qzhou_jax.data.inspect`, `qzhou_jax.hf.convert`,
`qzhou_jax.eval.mteb_local`), or as `python -m qzhou_jax.cli.<command>`. Not commands: `distributed.py` (multi-host
start-up, train and mine) and `model_flags.py` (the --model / --compare flags, evaluate and mteb_local).
"""
