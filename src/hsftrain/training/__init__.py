"""Lightning training: module, fine-tuning schedule, run(cfg)."""
