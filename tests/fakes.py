"""Small stand-ins the tests share."""

from __future__ import annotations

import types


class FixedBatches:
    """A loader of fixed batches, with the sampler hook `train_one_epoch` calls."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches
        self.sampler = types.SimpleNamespace(set_epoch=lambda epoch: None)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
