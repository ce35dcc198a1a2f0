"""Reptile (Nichol et al., 2018): theta <- theta + eps * mean_i(theta'_i - theta).

theta'_i is theta after k inner steps on task i. The loop's outer optimizer applies the pseudo-gradient
theta - theta'_i (averaged over the meta-batch); with SGD at learning rate eps that is exactly Reptile.
"""

from __future__ import annotations

import torch

from metarun.algorithms.base import Algorithm, Params, TaskStats
from metarun.episodes import Episode


class Reptile(Algorithm):
    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, TaskStats]:
        start = self.initial_params(params)
        fast, losses = self.inner_loop(start, episode.support_x, episode.support_y, self.inner_steps)
        pseudo_grads = {n: params[n].detach() - fast[n].detach() for n in params if start[n] is params[n]}
        with torch.no_grad():
            query_logits = self.logits(fast, episode.query_x)
        return pseudo_grads, self.query_stats(start, query_logits, episode, losses)
