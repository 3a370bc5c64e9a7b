"""Fine-tune on a formatted SPRI dataset with TRL's SFTTrainer and PEFT LoRA/QLoRA."""
