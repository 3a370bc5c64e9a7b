"""spri-sft: principle-aligned SFT data with SPRI (Situated-PRInciples), and fine-tuning on it."""

__version__ = "0.1.0"
