"""Fine-tuning: t5x-style trainer, data pipeline, optimizers."""
