"""A guided step's passes (negative prompt, STG, modality isolation) batched into one forward equal the separate
forwards within float32 rounding, through a whole guided run on a tiny dev checkpoint."""

import numpy as np
import pytest

import ltx_mlx
from ltx_mlx.models import transformer
from ltx_mlx.pipelines import common
from pipeline_fixtures import convert_folder, write_pipeline_checkpoints


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    _, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    return convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora)


def test_batched_guidance_equals_separate_passes(dev_folder, monkeypatch):
    real_denoise, real_forward = common.Generation.denoise, transformer.X0Model.__call__
    latents, batches = {}, {}

    def denoise(self, *args, **kwargs):
        out = real_denoise(self, *args, **kwargs)
        latents[self.batch_guidance] = [np.array(x) for x in out]
        return out

    def forward(self, video, audio, perturbations=None):
        batches.setdefault(current, []).append(video.latent.shape[0])
        return real_forward(self, video, audio, perturbations)

    monkeypatch.setattr(common.Generation, "denoise", denoise)
    monkeypatch.setattr(transformer.X0Model, "__call__", forward)
    for current in (False, True):
        ltx_mlx.load(dev_folder).generate("a cat walks on the beach at sunset", pipeline="one-stage", height=64,
                                          width=64, num_frames=9, seed=4, num_inference_steps=4, progress=False,
                                          video_guidance={"stg_blocks": [1]}, audio_guidance={"stg_blocks": [1]},
                                          batch_guidance=current)
    assert set(batches[False]) == {1} and set(batches[True]) == {4}  # CFG + STG + modality: 4 passes a step
    assert len(batches[False]) == 4 * len(batches[True])
    for ref, got in zip(latents[False], latents[True]):
        scale = np.abs(ref).max()
        assert scale > 0 and np.abs(got - ref).max() <= 1e-5 * scale


def test_batch_guidance_must_be_a_bool(dev_folder):
    with pytest.raises(TypeError, match="batch_guidance must be True or False"):
        ltx_mlx.load(dev_folder).generate("x", pipeline="one-stage", batch_guidance="yes")
