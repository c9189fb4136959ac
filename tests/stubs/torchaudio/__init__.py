"""Import-only stand-in for torchaudio, used by the test suite alone.

PyPI's torchaudio wheel cannot load beside the CPU build of torch used here. The reference
(ltx-core) imports torchaudio at module level but calls it only in its mel front end. Tests that run
that front end swap in tests/mel_reference.py (an independent numpy restatement of the two torchaudio
calls it makes); any other use fails loudly rather than returning wrong data.
"""

__version__ = "0.0+ltx-mlx-test-stub"


class _Unavailable:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"torchaudio.{self._name}.{attr} is not available in the ltx-mlx test stub")


functional = _Unavailable("functional")
transforms = _Unavailable("transforms")
