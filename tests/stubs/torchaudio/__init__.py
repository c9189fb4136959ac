"""Import-only stand-in for torchaudio, used by the test suite alone.

PyPI's torchaudio wheel cannot load beside the CPU build of torch used here. The reference
(ltx-core) imports torchaudio at module level but calls it only in its mel front end, which our
tests never run through the reference: ltx-mlx's own mel front end is checked against an
independent implementation instead. Any real use fails loudly rather than returning wrong data.
"""

__version__ = "0.0+ltx-mlx-test-stub"


class _Unavailable:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"torchaudio.{self._name}.{attr} is not available in the ltx-mlx test stub")


functional = _Unavailable("functional")
transforms = _Unavailable("transforms")
