"""The saved-run format, read by training (resume, stage hand-off), export, evaluation and mining: checkpoint
(Orbax manager, resume, fallback, params-only restore) | fingerprint (per-array digests) | meta (what a workdir
records: model config, tokenizer, prompt, steps)."""
