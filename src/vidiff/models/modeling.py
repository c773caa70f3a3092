"""ModelMixin: the base of every vidiff model (config + from_pretrained/save_pretrained).

Subclass pattern::

    @dataclass
    class MyConfig(Config):
        in_channels: int = 4
        block_out_channels: tuple[int, ...] = (320, 640)

    class MyModel(ModelMixin):
        config_class = MyConfig

        def __init__(self, config: MyConfig | None = None, **kwargs):
            super().__init__()
            cfg = self.register_config(config, kwargs)
            self.conv_in = nn.Conv2d(cfg.in_channels, ...)
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import ConfigMixin


class ModelMixin(nn.Module, ConfigMixin):
    config_name = "config.json"

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
