"""prompts → SPRI records: principles and responses, critic-scored, resumable (`spri-sft generate`)."""
