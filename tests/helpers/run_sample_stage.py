"""Runs the sample stage on the toy task in this process: `python -m tests.helpers.run_sample_stage OUT_DIR`."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")

from lsi import partitioning  # noqa: E402
from lsi.batch_decoding import LoadedModel  # noqa: E402
from lsi.self_improve.sampling import SampleStageConfig, run_sample_stage  # noqa: E402
from tests.helpers.toy import tiny_model, toy_task  # noqa: E402

CONFIG = SampleStageConfig(num_samples=4, max_new_tokens=8, num_shards=6, batch_size=2, seed=3)


def main(output_dir: str) -> None:
    lm, params, vocab, max_length = tiny_model()
    mesh = partitioning.make_mesh((2, 2, 2))
    params = partitioning.shard_tree(params, partitioning_axes(lm), mesh)
    run_sample_stage(toy_task(), LoadedModel(lm, params, vocab, max_length, mesh), CONFIG, output_dir, progress=False)


def partitioning_axes(lm):
    from lsi.models import param_logical_axes  # noqa: PLC0415

    return param_logical_axes(lm.config)


if __name__ == "__main__":
    main(sys.argv[1])
