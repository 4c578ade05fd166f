"""The ELBO every semimech SVI fit uses: NumPyro's ``Trace_ELBO`` with its site terms in name order.

NumPyro forms and sums the per-site terms (model log density minus guide log density) over a ``set``
of site names, whose order follows Python's string hashing, which differs between processes
(``PYTHONHASHSEED``). The same fit then traced to a different program in each process: its loss
differed in the last bits, and the persistent compilation cache, keyed by the program's text,
missed the SVI step in every new process. Here one particle is the same computation as NumPyro's
(same random keys, same traces, same checks), its terms formed and summed in sorted name order.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import random
from numpyro.handlers import replay, seed
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import compute_log_probs
from numpyro.util import check_model_guide_match


class OrderedTraceELBO(Trace_ELBO):
    """``Trace_ELBO`` whose single-particle loss is the same program in every process (terms in name order).

    More particles, a multi-sample guide or ``mutable`` sites: NumPyro's own computation.
    """

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if self.num_particles != 1 or self.multi_sample_guide:
            return super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        model_seed, guide_seed = random.split(rng_key)
        guide_log_probs, guide_trace = compute_log_probs(seed(guide, guide_seed), args, kwargs, param_map)
        if any(site["type"] == "mutable" for site in guide_trace.values()):
            return super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        model_log_probs, model_trace = compute_log_probs(replay(seed(model, model_seed), guide_trace), args, kwargs,
                                                         param_map)
        if any(site["type"] == "mutable" for site in model_trace.values()):
            return super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        check_model_guide_match(model_trace, guide_trace)
        zero = jnp.array(0.0)
        elbo = sum((model_log_probs.get(name, zero) - guide_log_probs.get(name, zero)
                    for name in sorted(set(model_log_probs) | set(guide_log_probs))), start=zero)
        return {"loss": -elbo, "mutable_state": None}
