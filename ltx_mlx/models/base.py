"""What every model config shares: a dataclass read from a checkpoint's config dict, then validated."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class BaseConfig:
    @classmethod
    def from_dict(cls, d: dict):
        """Keys that are not fields are ignored (files carry more than a model reads), as mlx-lm's BaseModelArgs."""
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in names})
        config.validate()
        return config

    def validate(self):
        """Raise ValueError naming the key, its value and what is allowed."""


def check_choice(where: str, key: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"{where}: {key} {value!r} is not one of {tuple(allowed)}")
