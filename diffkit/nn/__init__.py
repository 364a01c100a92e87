"""Score networks: time and label embeddings, an MLP for vectors and a small U-Net for images.

Every network maps `(x, time_input, cond) -> output` with `x` `(B, *data_shape)`, `time_input`
`(B,)` and `cond` a LongTensor of labels `(B,)` or None (the null class), so it plugs straight
into `diffkit.ScoreModel`. With `learn_variance=True` the output has twice the channels of `x`
(dim 1): the first half is the mean parameterization, the second the variance interpolation v of
improved DDPM (see `diffkit.core.model.split_learned_variance`).
"""

from diffkit.nn.embedding import LabelEmbedding, TimeEmbedding, sinusoidal_embedding
from diffkit.nn.mlp import MLPScoreNet
from diffkit.nn.unet import UNet

__all__ = ["LabelEmbedding", "MLPScoreNet", "TimeEmbedding", "UNet", "sinusoidal_embedding"]
