"""Fine-tuning: t5x-style trainer, data pipeline, optimizers."""

from lsi.training.data import (
    PackedBatches,
    PackingStats,
    TaskMixture,
    TrainingExample,
    load_seqio_examples,
    load_seqio_mixture,
    pack_examples,
)
from lsi.training.lora import LoraConfig
from lsi.training.optimizers import OptimizerConfig, make_optimizer
from lsi.training.trainer import NonFiniteLossError, TrainConfig, TrainState, TrainSummary, export_hf, train

__all__ = [
    "PackedBatches", "PackingStats", "TaskMixture", "TrainingExample", "load_seqio_examples", "load_seqio_mixture",
    "pack_examples", "OptimizerConfig",
    "make_optimizer", "LoraConfig",
    "NonFiniteLossError", "TrainConfig", "TrainState", "TrainSummary", "export_hf", "train",
]
