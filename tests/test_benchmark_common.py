"""Benchmark helpers: the alternating timer the side-by-side benchmarks rely on, and the decode-paths benchmark."""

from benchmarks import common


def test_time_interleaved_alternates_sides_and_settles_each_timed_call_outside_the_timing():
    events = []

    def side(name, wall):
        def call():
            events.append(name)
            return wall, wall / 2

        return call

    timings = common.time_interleaved({"a": side("a", 1.0), "b": side("b", 3.0)}, warmup=1, repeats=3,
                                      settle={"b": lambda: events.append("settle b")})
    assert events == ["a", "b",  # warmup, no settling
                      "a", "settle b", "b",  # round 0: a first
                      "settle b", "b", "a",  # round 1: b first
                      "a", "settle b", "b"]
    assert timings["a"]["times_s"] == [1.0] * 3 and timings["b"]["median_s"] == 3.0
    assert timings["b"]["cpu_utilization"] == 0.5


def test_decode_paths_benchmark_runs_and_both_paths_sample_alike(tmp_path):
    from benchmarks import decode_paths

    record = decode_paths.main(["--models", "tiny", "--prompt_length", "16", "--samples", "2", "--new_tokens", "4",
                                "--repeats", "1", "--output", str(tmp_path / "decode_paths.json")])
    assert [row["layerwise"] for row in record["results"]] == [True, False]
    assert all(row["same_tokens_as_other_path"] and row["compile_s"] > 0 for row in record["results"])
    assert (tmp_path / "decode_paths.json").exists()
