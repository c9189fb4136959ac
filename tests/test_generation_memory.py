"""Memory during a generation: MLX's buffer cache is bounded for the run and restored after; an allocation
failure in a stage is one `generate.py: error:` line naming the stage, with no output file left."""

import mlx.core as mx
import pytest

import ltx_mlx
from ltx_mlx.cli.generate import main as generate
from ltx_mlx.pipelines import common
from pipeline_fixtures import convert_folder, write_pipeline_checkpoints

PROMPT = "a cat walks on the beach at sunset"
SMALL = dict(height=64, width=64, num_frames=9, seed=4, progress=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    distilled, _, gemma, upsampler, _ = write_pipeline_checkpoints(tmp)
    return convert_folder(distilled, tmp / "distilled-mlx", gemma, upsampler)


def test_the_cache_is_bounded_in_every_stage_and_restored(model, monkeypatch):
    monkeypatch.setenv("LTX_MLX_CACHE_LIMIT_GB", "0.001")
    seen = {}
    real_stage = common.Generation.stage

    def stage(self, name):
        cm = real_stage(self, name)

        class Recorder:
            def __enter__(self):
                return cm.__enter__()

            def __exit__(self, *exc):
                out = cm.__exit__(*exc)
                mx.eval()
                seen[name] = mx.get_cache_memory()
                return out
        return Recorder()

    monkeypatch.setattr(common.Generation, "stage", stage)
    before = mx.set_cache_limit(12_345_678)
    try:
        ltx_mlx.load(model).generate(PROMPT, keep_frames=True, **SMALL)
        assert mx.set_cache_limit(before) == 12_345_678  # restored after the run
    finally:
        mx.set_cache_limit(before)
    assert {"text", "stage 1", "stage 2", "video decode"} <= set(seen)
    assert max(seen.values()) <= 1_000_000, seen


def test_a_bad_cache_limit_is_one_line(model, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LTX_MLX_CACHE_LIMIT_GB", "lots")
    out = tmp_path / "out.mp4"
    assert generate(["--model", str(model), "--prompt", PROMPT, "--output-path", str(out), "--height", "64",
                     "--width", "64", "--num-frames", "9", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LTX_MLX_CACHE_LIMIT_GB='lots'" in err[0]
    assert not out.exists()


def _fail_in_video_decode(monkeypatch, message):
    real = common.decode_video

    def decode(*args, **kwargs):  # the first chunk reaches the mp4 writer, then the second fails to allocate
        chunks = real(*args, **kwargs)
        yield next(chunks)
        raise RuntimeError(message)

    monkeypatch.setattr(common, "decode_video", decode)


def _fail_at_end_of(monkeypatch, stage, message):
    real_stage = common.Generation.stage

    def failing(self, name):
        cm = real_stage(self, name)

        class Fail:
            def __enter__(self):
                return cm.__enter__()

            def __exit__(self, *exc):
                if name == stage and exc[0] is None:
                    return cm.__exit__(RuntimeError, RuntimeError(message), None)
                return cm.__exit__(*exc)
        return Fail()

    monkeypatch.setattr(common.Generation, "stage", failing)


@pytest.mark.parametrize("message, stage", [("[metal::malloc] Attempting to allocate 68719476736 bytes which is "
                                             "greater than the maximum allowed buffer size", "video decode"),
                                            ("[METAL] Command buffer execution failed: Insufficient Memory",
                                             "stage 2")])
def test_an_allocation_failure_names_its_stage(model, tmp_path, monkeypatch, capsys, message, stage):
    if stage == "video decode":
        _fail_in_video_decode(monkeypatch, message)
    else:
        _fail_at_end_of(monkeypatch, stage, message)
    out = tmp_path / "out.mp4"
    assert generate(["--model", str(model), "--prompt", PROMPT, "--output-path", str(out), "--height", "64",
                     "--width", "64", "--num-frames", "9", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"generate.py: error: out of memory in the {stage} stage") and "--low-memory" in err[0]
    assert "no output was written" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_other_runtime_errors_are_not_called_out_of_memory(model):
    bundle = ltx_mlx.load(model)
    g = common.Generation(bundle, _settings(bundle), progress=False)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with g.stage("x"):
            raise RuntimeError("shape mismatch")
    with pytest.raises(MemoryError, match="out of memory in the x stage"):
        with g.stage("x"):
            raise RuntimeError("[malloc] Unable to allocate 12 bytes")


def _settings(bundle):
    from ltx_mlx.pipelines.settings import resolve_settings

    return resolve_settings("distilled", bundle.model_version,
                            int(bundle.config["config"]["transformer"].get("num_layers", 48)), prompt=PROMPT,
                            height=64, width=64, num_frames=9)
