"""ups: reproducible HuBERT continued pre-training on Unsupervised People's Speech."""

__version__ = "0.1.0"
