"""Pipeline defaults equal the reference's `ltx_pipelines.utils.constants`, field for field."""

import dataclasses

import pytest
from ltx_pipelines.utils import constants as ref

from ltx_mlx.diffusion import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_mlx.pipelines import params as ours


def _fields(p):
    out = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    for name in ("video_guider_params", "audio_guider_params"):
        g = out.pop(name)
        out.update({f"{name}.{f.name}": getattr(g, f.name) for f in dataclasses.fields(g)})
    return out


@pytest.mark.parametrize("name", ["LTX_2_PARAMS", "LTX_2_3_PARAMS", "LTX_2_3_HQ_PARAMS"])
def test_params_equal_the_reference(name):
    mine, theirs = _fields(getattr(ours, name)), _fields(getattr(ref, name))
    assert mine == theirs
    assert (getattr(ours, name).stage_2_height, getattr(ours, name).stage_2_width) == \
        (getattr(ref, name).stage_2_height, getattr(ref, name).stage_2_width)


def test_negative_prompt_and_sigma_tables_equal_the_reference():
    assert ours.DEFAULT_NEGATIVE_PROMPT == ref.DEFAULT_NEGATIVE_PROMPT
    assert [float(s) for s in DISTILLED_SIGMA_VALUES] == ref.DISTILLED_SIGMA_VALUES
    assert [float(s) for s in STAGE_2_DISTILLED_SIGMA_VALUES] == ref.STAGE_2_DISTILLED_SIGMA_VALUES


def test_which_pipelines_need_what():
    p = ours.PIPELINES
    assert {n for n, s in p.items() if s.stage_2_distilled_lora} == {"two-stage", "hq", "keyframes", "a2v"}
    assert {n for n, s in p.items() if s.two_stage} == {"distilled", "two-stage", "hq", "keyframes", "a2v"}
    assert {n for n, s in p.items() if not s.guided} == {"distilled"}
    assert {n for n, s in p.items() if s.encodes_audio} == {"a2v", "retake"}
    assert all(s.size_multiple == (64 if s.two_stage else 32) for s in p.values())
    with pytest.raises(TypeError):
        ours.PipelineSpec("x", "d", True, True, True)  # keywords only
    # generate.py --help shows these descriptions: the LoRA-needing pipelines say so
    assert all(("distilled LoRA" in s.description) == s.stage_2_distilled_lora for s in p.values() if s.guided)


@pytest.mark.parametrize("version,blocks", [("2.3.0", [28]), (None, [29])])
def test_missing_stg_blocks_name_the_flags_that_choose_them(version, blocks):
    from ltx_mlx.pipelines.settings import resolve_settings

    with pytest.raises(ValueError) as e:  # the version's default block on a 2-layer transformer
        resolve_settings("one-stage", version, 2, prompt="a fox", video_guidance={"stg_blocks": [1]})
    msg = str(e.value)
    for words in (f"audio STG blocks {blocks} (the default for this model version)", "blocks 0..1",
                  "--audio-stg-blocks", "audio_guidance={'stg_blocks'", "--audio-stg-guidance-scale 0"):
        assert words in msg, (words, msg)
    with pytest.raises(ValueError) as e:  # a block the user chose
        resolve_settings("one-stage", version, 2, prompt="a fox", video_guidance={"stg_blocks": [40]},
                         audio_guidance={"stg_blocks": [0]})
    assert "video STG blocks [40] do not exist" in str(e.value) and "--video-stg-blocks" in str(e.value)
    assert "default" not in str(e.value)
    settings = resolve_settings("one-stage", version, 2, prompt="a fox", audio_guidance={"stg_scale": 0.0},
                                video_guidance={"stg_blocks": [1]})
    assert settings.audio_guider.stg_blocks == blocks and settings.video_guider.stg_blocks == [1]
