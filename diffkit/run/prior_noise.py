"""Prior noise of a run read batch by batch, with the bits of one draw for all samples.

`torch.randn` on the CPU fills a tensor in blocks of 16 values, each block from 16 consecutive
uniforms of the generator; a draw whose size is not a multiple of 16 takes 16 more uniforms
and recomputes its last 16 values from them. So consecutive draws from one generator give
exactly the values of a single draw of their total size when every draw but the last has a
multiple of 16 values and the last has at least 16 (checked for float32 and float64 by
`tests/test_sample_memory.py`). `PriorNoise` draws the prior in chunks of such sizes, fixed by
the data size alone, so the noise of sample i is the same for every batch size and equal to
that of one `prior_sample((N, *shape))` call, while only one chunk is held at a time.
On other devices (whose generators advance differently) the prior is drawn in one call.
"""

from __future__ import annotations

import math

import torch

from diffkit.core.process import NoiseProcess

DRAW_VALUES = 2**20  # about this many values per draw on the CPU


def draw_rows(dim: int) -> int:
    """Rows per draw for samples of `dim` values: a multiple of 16 near `DRAW_VALUES / dim`, >= 16."""
    return max(16, DRAW_VALUES // max(dim, 1) // 16 * 16)


class PriorNoise:
    """The prior noise `(N, *shape)` of a run, handed out in consecutive row blocks.

    Draws `process.prior_sample((R, *shape))` with `R = draw_rows(D)` rows while more than `2 R`
    rows remain, then the rest in one draw (so the last draw has at least 16 values unless it
    is the only one).

    Args:
        process: the noise process whose prior is sampled.
        num_samples: N.
        shape: the data shape of one sample.
        generator: the run's prior generator (seeded with the run's seed).
        device, dtype: where and in which dtype the noise is drawn.
    """

    def __init__(
        self,
        process: NoiseProcess,
        num_samples: int,
        shape: tuple[int, ...],
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.process, self.shape, self.generator = process, shape, generator
        self.device, self.dtype = device, dtype
        self.rows = draw_rows(math.prod(shape)) if device.type == "cpu" else num_samples
        self.remaining = num_samples
        self.buffer: torch.Tensor | None = None

    def _draw(self) -> torch.Tensor:
        size = self.remaining if self.remaining <= 2 * self.rows else self.rows
        self.remaining -= size
        return self.process.prior_sample(
            (size, *self.shape), generator=self.generator, device=self.device, dtype=self.dtype
        )

    def take(self, count: int) -> torch.Tensor:
        """The next `count` rows of noise `(count, *shape)`."""
        pieces = []
        while count > 0:
            if self.buffer is None or self.buffer.shape[0] == 0:
                if self.remaining == 0:
                    raise ValueError("asked for more prior noise than the run's number of samples")
                self.buffer = self._draw()
            piece, self.buffer = self.buffer[:count], self.buffer[count:]
            pieces.append(piece)
            count -= piece.shape[0]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
