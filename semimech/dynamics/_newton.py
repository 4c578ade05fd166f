"""Newton's method for fixed points, with a closed-form Jacobian or one by ``jax.jacfwd``.

It stops by optimistix's Cauchy test (the step is below ``atol + rtol |x|`` in max norm and
``|f|`` below ``atol`` at the point the step was taken from). It is written out rather than taken
from ``optimistix.Newton`` because its factorisations go through
:mod:`semimech.dynamics._linalg`, which hands LAPACK one matrix per call on CPU: optimistix's
solves (lineax's LU) reach jaxlib's batched LAPACK kernels under ``vmap`` (a posterior's draws, a
design's conditions), which can hang a 2-core machine; and the last factorisation is reused for
the implicit derivative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from semimech.dynamics._linalg import lu_factor, lu_solve


def _newton_lu(g, jac, x0, args, *, rtol, atol, max_steps, patience: int = 10):
    """Newton's method with the Jacobian ``jac(x, args)`` (closed form, or ``jax.jacfwd(g)``).

    Stops when the step is below ``atol + rtol |x|`` (max norm) and ``|f|`` below ``atol`` at the
    point the step was taken from. It gives up (failed) on a non-finite
    iterate, or when ``max |f|`` has not fallen below 99% of its best value for ``patience``
    iterations (MINPACK's "not making good progress": a wandering Newton iteration otherwise
    costs all ``max_steps`` factorisations). Returns ``(x, solved, (lu, piv))``: the LU factors
    of the last Jacobian, taken at the previous iterate (one converged step from ``x``), for
    reuse by the implicit derivative.
    """
    n = x0.shape[0]

    def cond(c):
        _, _, _, k, done, bad, _, since = c
        return (k < max_steps) & ~done & ~bad & (since < patience)

    def body(c):
        x, _, _, k, _, _, best, since = c
        f = g(x, args)
        lu, piv = lu_factor(jac(x, args).astype(x.dtype))
        dx = lu_solve((lu, piv), f)
        new = x - dx
        done = jnp.all(jnp.abs(dx) < atol + rtol * jnp.abs(new)) & jnp.all(jnp.abs(f) < atol)
        bad = ~jnp.all(jnp.isfinite(new))
        size = jnp.max(jnp.abs(f))
        better = size < 0.99 * best
        return new, lu, piv, k + 1, done, bad, jnp.where(better, size, best), jnp.where(better, 0, since + 1)

    init = (x0, jnp.eye(n, dtype=x0.dtype), jnp.arange(n, dtype=jnp.int32), jnp.array(0), jnp.array(False),
            ~jnp.all(jnp.isfinite(x0)), jnp.array(jnp.inf, x0.dtype), jnp.array(0))
    x, lu, piv, _, done, bad, _, _ = jax.lax.while_loop(cond, body, init)
    return x, done & ~bad, (lu, piv)
