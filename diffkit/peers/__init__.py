"""Peer libraries (diffusers, k-diffusion) on diffkit's processes and oracle models.

- `availability`: the peer names `--peers` accepts, `require` (`PeerNotInstalled`, a UsageError
  naming the missing package);
- `kdiffusion`: import bridge to `k_diffusion.sampling`, EDM denoiser of any process, sigma lists,
  shared global-RNG noise;
- `diffusers`: scheduler config of a diffkit process, timestep map, eps adapter, scheduler loop;
- `runners`: the `diffkit bench --peers` runners and the solver-to-peer-method mapping.

Neither peer is imported when this package is: each is imported on first use.
"""

from diffkit.peers.availability import PEERS, Peer, PeerNotInstalled, parse_peers, require
from diffkit.peers.diffusers import diffusers_config

__all__ = ["PEERS", "Peer", "PeerNotInstalled", "diffusers_config", "parse_peers", "require"]
