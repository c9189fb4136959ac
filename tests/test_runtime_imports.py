"""What a user's process holds: a tiny generation (audio-to-video from a 44.1 kHz file, then text-to-video with
the distilled pipeline) run in a fresh interpreter imports neither torch nor transformers, though the test
environment has both, and prints nothing on stderr, also when torch is absent (as after a plain `pip install`),
the case where an import of transformers would print its "PyTorch was not found" warning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline_fixtures import convert_folder, write_pipeline_checkpoints

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "transformers", "torchaudio")
SMALL = ["--height", "64", "--width", "64", "--num-frames", "9", "--seed", "1", "--quiet"]
GUIDED = ["--num-inference-steps", "2", "--video-stg-blocks", "1"]  # the distilled pipeline refuses these

# argv: modules.json, then one generate.py command line per run, each a JSON list
CHILD = r"""
import json, sys
if "--no-torch" in sys.argv:  # as if torch were not installed: `import torch` fails, find_spec says absent
    sys.argv.remove("--no-torch")
    sys.modules["torch"] = None
from ltx_mlx.cli.generate import main
for argv in sys.argv[2:]:
    assert main(json.loads(argv)) == 0, argv
json.dump({"modules": sorted(m for m, v in sys.modules.items() if v is not None),
           "ltx_mlx": sys.modules["ltx_mlx"].__file__}, open(sys.argv[1], "w"))
"""


def write_wav(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    pcm = (np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 523 * t)]) * 0.3 * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=rate)
        s.codec_context.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runtime")
    _, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    model = convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora)
    wav = write_wav(tmp / "drums.wav")
    common = ["--model", str(model), "--frame-rate", "24", *SMALL]
    return tmp, [common + [*GUIDED, "--pipeline", "a2v", "--prompt", "a drummer in a room", "--audio-path", str(wav),
                           "--output-path", str(tmp / "a2v.mp4")],
                 common + ["--pipeline", "distilled", "--prompt", "a cat walks on the beach",
                           "--output-path", str(tmp / "t2v.mp4")]]


def run_child(tmp: Path, commands: list, *flags: str) -> tuple[list, subprocess.CompletedProcess]:
    out = tmp / f"modules{''.join(flags)}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    for cmd in commands:
        Path(cmd[cmd.index("--output-path") + 1]).unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, *flags, str(out), *map(json.dumps, commands)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cmd in commands:
        with av.open(cmd[cmd.index("--output-path") + 1]) as c:
            assert len(c.streams.video) == len(c.streams.audio) == 1
    found = json.loads(out.read_text())
    assert Path(found["ltx_mlx"]).is_relative_to(ROOT)  # this checkout's package, not an installed one
    return found["modules"], proc


def test_generation_imports_neither_torch_nor_transformers(runs):
    tmp, commands = runs
    modules, proc = run_child(tmp, commands)
    assert "ltx_mlx.pipelines.a2v" in modules and "tokenizers" in modules and "mlx.core" in modules
    leaked = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
    assert not leaked, f"imported at runtime: {leaked[:10]}"
    assert proc.stderr == "", proc.stderr[-2000:]


def test_generation_without_torch_prints_no_warning(runs):
    tmp, commands = runs
    modules, proc = run_child(tmp, commands, "--no-torch")
    assert "PyTorch" not in proc.stderr and proc.stderr == "", proc.stderr[-2000:]
    assert not any(m.split(".")[0] in FORBIDDEN for m in modules)
