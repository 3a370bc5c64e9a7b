"""records.jsonl → a Hugging Face SFT dataset in TRL's conversational format (`spri-sft format`)."""
