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
