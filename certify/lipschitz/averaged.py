"""Chains of linear layers and monotone activations bounded from the norms of all contiguous layer products.

For ``f = W_m s(W_{m-1} ... s(W_1 x))`` with every activation monotone and ``beta``-Lipschitz (slope in
[0, beta]), each scalar difference is ``s(a) - s(b) = d (a - b)`` with ``d`` in [0, beta], so
``f(x) - f(y) = W_m D_{m-1} ... D_1 W_1 (x - y)`` exactly, with diagonal ``D_i`` in [0, beta_i]. Writing
``D_i = beta_i (I + S_i) / 2`` (``S_i`` diagonal in [-1, 1]) and expanding, every term is a product of contiguous
groups ``W_j ... W_i`` separated by ``S``'s of norm <= 1, so

    Lip(f) <= prod(beta) theta_m / 2^(m-1),   theta_0 = 1,   theta_j = sum_{i <= j} ||W_j ... W_i|| theta_{i-1},

the bound of Combettes and Pesquet ("Lipschitz certificates for layered network structures driven by averaged
activation operators", SIAM J. Math. Data Sci. 2020) for firmly nonexpansive activations. It never exceeds the
product of the layer norms, and is below it when consecutive layers partly cancel.

Convolutions. A chain of zero-padded convolutions (with folded per-channel scales) is lifted to circular
convolutions ``C_i`` on one grid per axis large enough that no tap read by a real output wraps
(``M_{i-1} >= n_{i-1} + pads`` and divisible by the stride, ``M_i = M_{i-1} / s_i``; see `certify.lipschitz.conv`).
The crop to the real window after each layer is a diagonal 0/1 mask, absorbed into ``D_i``, so the expansion holds
with the circular ``C_i``. A product ``C_j ... C_i`` whose layers after the first have stride 1 is, at each Fourier
frequency of the output grid, the product of the layers' (polyphase) blocks; its norm is the largest block norm
(Gram iteration, with the floating-point error of forming and multiplying the blocks added). Other products are
bounded by splitting them (``||AB|| <= ||A|| ||B||``).
"""

from __future__ import annotations

import math
import time

import torch

from certify.lipschitz.cholesky import certified_block_norms
from certify.lipschitz.conv import ConvGeometry
from certify.lipschitz.gram import frobenius_upper, matmul_gamma, round_up
from certify.lipschitz.gram_top import certified_norm
from certify.lipschitz.lifting import ConvLayer, blocks_at, dense_kernel, lifted_kernels

_BLOCK_BYTES = 1 << 27  # product blocks formed at once


def averaged_bound(products: list[list[float]], betas: list[float]) -> float:
    """The Combettes-Pesquet bound from upper bounds ``products[i][j]`` of ``||W_j ... W_i||`` (i <= j) and the
    activations' slope bounds ``betas`` (one per activation, m - 1 of them), every operation rounded upward."""
    m = len(products)
    theta = [1.0]
    for j in range(m):
        total = 0.0
        for i in range(j + 1):
            total = round_up(total + round_up(products[i][j] * theta[i]))
        theta.append(total)
    value = theta[m] / 2.0 ** (m - 1)  # exact: a power of two
    for beta in betas:
        value = round_up(value * beta)
    return value


def split_products(products: list[list[float | None]]) -> list[list[float]]:
    """Fill and tighten a triangle of product bounds: ``U[i][j] = min(U[i][j], U[i][k] U[k+1][j])``."""
    m = len(products)
    out = [[math.inf] * m for _ in range(m)]
    for length in range(m):
        for i in range(m - length):
            j = i + length
            best = products[i][j] if products[i][j] is not None else math.inf
            for k in range(i, j):
                best = min(best, round_up(out[i][k] * out[k + 1][j]))
            out[i][j] = best
    return out


def conv_products(layers: list[ConvLayer], rel_tol: float = 1e-3) -> list[list[float | None]]:
    """Upper bounds of ``||C_j ... C_i||`` for the circular lifts (None where a later layer is strided)."""
    kernels, errors = lifted_kernels(layers)
    m = len(layers)
    result: list[list[float | None]] = [[None] * m for _ in range(m)]
    for i in range(m):
        last = i
        while last + 1 < m and max(layers[last + 1].stride) == 1:
            last += 1
        result[i][i:last + 1] = _run_norms(kernels[i:last + 1], errors[i:last + 1], rel_tol)
    return result


def _run_norms(kernels, errors, rel_tol: float) -> list[float]:
    """Bounds of ||C_j ... C_0|| for every j of a run whose layers after the first have stride 1 (one output grid)."""
    grid = kernels[0][1]
    freqs = _half_spectrum(grid)
    widest = max(k.shape[0] * k.shape[1] for k, _ in kernels)
    step = max(1, _BLOCK_BYTES // (16 * widest * 2))
    uppers = [0.0] * len(kernels)
    floors = [0.0] * len(kernels)
    for start in range(0, freqs.shape[0], step):
        chunk = freqs[start:start + step]
        product, fro, err = None, 1.0, 0.0
        for j, (kernel, _) in enumerate(kernels):
            blocks = blocks_at(kernel, grid, chunk)
            f_j = float(frobenius_upper(blocks).max())
            if product is None:
                product, err = blocks, errors[j]
            else:
                product = blocks @ product
                err = _product_error(err, fro, f_j, errors[j], blocks.shape[2])
            fro = round_up(fro * f_j * (1.0 + matmul_gamma(blocks.shape[2])))  # ||fl(K'P')||_F
            up, low, _ = certified_block_norms(product, floor=floors[j], rel_tol=rel_tol)
            uppers[j] = max(uppers[j], round_up(float(up.max()) + err))
            floors[j] = max(floors[j], float(low.max()))
    return uppers


def _half_spectrum(grid: tuple[int, ...]) -> torch.Tensor:
    """The frequencies (F, D) of a grid with the last axis halved: real kernels have a conjugate-symmetric
    spectrum."""
    axes = [torch.arange(g) for g in grid]
    axes[-1] = torch.arange(grid[-1] // 2 + 1)
    return torch.cartesian_prod(*axes).reshape(-1, len(grid))


def _product_error(err: float, fro: float, f_new: float, e_new: float, inner: int) -> float:
    """Spectral-norm error of ``fl(K' P')`` against the exact ``K P``, where ``||P' - P|| <= err``,
    ``||P'||_F <= fro``, ``||K' - K|| <= e_new`` and ``||K'||_F <= f_new``: ``(f + e) err + e fro`` from the inputs,
    plus the rounding ``|G| <= gamma |K'| |P'|`` (Higham 3.5), so ``||G|| <= gamma f fro``."""
    rounding = matmul_gamma(inner) * f_new * fro
    return round_up(round_up((f_new + e_new) * err) + round_up(e_new * fro) + rounding)


def dense_products(matrices: list[torch.Tensor], known: list[float | None] | None = None) -> list[list[float | None]]:
    """Upper bounds of ``||W_j ... W_i||`` for explicit float64 matrices (each product formed once, its rounding
    bounded like the convolutions': one block at one frequency); ``known[i]``, when not None, is a certified bound
    of ``||W_i||`` taken as it is."""
    m = len(matrices)
    result: list[list[float | None]] = [[None] * m for _ in range(m)]
    for i in range(m):
        product, fro, err = None, 1.0, 0.0
        for j in range(i, m):
            w = matrices[j].to(torch.float64)
            f_j = float(frobenius_upper(w.unsqueeze(0))[0])
            if product is None:
                product = w
            else:
                product = w @ product
                err = _product_error(err, fro, f_j, 0.0, w.shape[1])
            fro = round_up(fro * f_j * (1.0 + matmul_gamma(w.shape[1])))  # ||fl(K'P')||_F
            if j == i and known and known[i] is not None:
                result[i][i] = known[i]
            else:
                result[i][j] = round_up(certified_norm(product)[0] + err)
    return result


#: Power steps of the lower estimates that decide whether the certified products are worth forming: a rough pass
#: over every frequency, then the leading frequencies of each product again.
ESTIMATE_STEPS = 16
ROUGH_STEPS = 3
LEAD_FREQUENCIES = 8


def _power_product(blocks: list[torch.Tensor], steps: int = ESTIMATE_STEPS) -> torch.Tensor:
    """Achieved ``||K_j ... K_i v|| / ||v||`` per block of a batch (blocks (F, out, in) per layer, applied in
    order) after power steps through the factors (the product is never formed): estimates from below, (F,)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(blocks[0].shape[0], blocks[0].shape[2], 1, generator=gen, dtype=torch.float64)
    v = v.to(blocks[0].dtype)
    for _ in range(steps):
        u = v
        for k in blocks:
            u = k @ u
        u = u.mH  # back through the adjoints as row vectors: K^H u = (u^H K)^H, with K read in memory order
        for k in reversed(blocks):
            u = u @ k
        v = u.mH / torch.linalg.vector_norm(u, dim=-1, keepdim=True).mH.clamp_min(1e-30)
    u = v
    for k in blocks:
        u = k @ u
    return (torch.linalg.vector_norm(u, dim=(-2, -1)) / torch.linalg.vector_norm(v, dim=(-2, -1))).real.double()


def dense_lower_products(matrices: list[torch.Tensor]) -> list[list[float | None]]:
    """Estimates from below of ``||W_j ... W_i||`` (power steps through the factors)."""
    m = len(matrices)
    mats = [w.to(torch.float64).unsqueeze(0) for w in matrices]
    return [[float(_power_product(mats[i:j + 1])[0]) if j >= i else None for j in range(m)] for i in range(m)]


def conv_lower_products(layers: list[ConvLayer]) -> list[list[float | None]]:
    """Estimates from below of the products that `conv_products` certifies (None where it splits): power steps
    through the layers' Fourier blocks at every frequency of the run's grid."""
    kernels, _ = lifted_kernels(layers)
    m = len(layers)
    result: list[list[float | None]] = [[None] * m for _ in range(m)]
    first = 0
    while first < m:  # maximal runs whose layers after the first have stride 1: one grid, blocks formed once
        last = first
        while last + 1 < m and max(layers[last + 1].stride) == 1:
            last += 1
        grid = kernels[first][1]
        freqs = _half_spectrum(grid)
        widest = max(k.shape[0] * k.shape[1] for k, _ in kernels[first:last + 1])
        step = max(1, _BLOCK_BYTES // (16 * widest * (last - first + 1)))
        rough = {(i, j): [] for i in range(first, last + 1) for j in range(i, last + 1)}
        for start in range(0, freqs.shape[0], step):  # a rough pass in single precision ranks the frequencies
            blocks = [blocks_at(k, grid, freqs[start:start + step]).to(torch.complex64)
                      for k, _ in kernels[first:last + 1]]
            for i, j in rough:
                rough[i, j].append(_power_product(blocks[i - first:j - first + 1], steps=ROUGH_STEPS))
        for (i, j), values in rough.items():  # the leading frequencies again, in double precision
            lead = freqs[torch.cat(values).argsort(descending=True)[:LEAD_FREQUENCIES]]
            blocks = [blocks_at(k, grid, lead) for k, _ in kernels[i:j + 1]]
            result[i][j] = float(_power_product(blocks).max())
        first = last + 1
    return result


def _by_runs(items: list, conv_fn, dense_fn) -> list[list[float | None]]:
    """A triangle of product values filled run by run: ``conv_fn(run)`` on runs of ``ConvLayer``,
    ``dense_fn(run, start)`` on runs of explicit matrices; products across a change of kind stay None (split)."""
    m = len(items)
    products: list[list[float | None]] = [[None] * m for _ in range(m)]
    start = 0
    while start < m:
        end = start
        kind = isinstance(items[start], ConvLayer)
        while end + 1 < m and isinstance(items[end + 1], ConvLayer) == kind:
            end += 1
        run = items[start:end + 1]
        sub = conv_fn(run) if kind else dense_fn(run, start)
        for a in range(len(run)):
            products[start + a][start:end + 1] = sub[a]
        start = end + 1
    return products


def chain_bound(items: list, betas: list[float], target: float | None = None,
                diagonal: list[float | None] | None = None) -> tuple[float | None, float]:
    """The averaged-operator bound of a chain of linear items (``ConvLayer`` or a float64 matrix), with the
    activations' slope bounds between them. Products are formed within runs of the same kind; across a change of
    kind they are split. ``diagonal[i]``, when given for a matrix item, is a certified bound of its norm already
    known (not recomputed). With ``target``, a cheap lower estimate of the result is formed first and the certified
    products are skipped (None returned) when it cannot go below ``target``. Returns (bound or None, ms)."""
    started = time.perf_counter()
    if target is not None:
        lower = averaged_bound(split_products(_by_runs(items, conv_lower_products,
                                                       lambda run, _: dense_lower_products(run))), betas)
        if lower >= target:
            return None, (time.perf_counter() - started) * 1e3
    known = diagonal or [None] * len(items)
    products = _by_runs(items, conv_products, lambda run, start: dense_products(run, known[start:start + len(run)]))
    value = averaged_bound(split_products(products), betas)
    return value, (time.perf_counter() - started) * 1e3


#: Largest explicit matrix taken into a chain (its products are formed densely).
DENSE_MAX_ENTRIES = 1 << 24


def _item(segment):
    """A segment as a chain item: its explicit matrix, its folded convolution as a ``ConvLayer``, or None."""
    from certify.lipschitz.conv import normalize_conv
    from certify.lipschitz.exact import materialize
    from certify.lipschitz.segments import _folded_conv

    if segment.bound is None or segment.bound.upper is None:
        return None
    if segment.matrix is not None:
        return segment.matrix if segment.matrix.numel() <= DENSE_MAX_ENTRIES else None
    conv = _folded_conv(segment)
    if conv is None or conv.conv.get("transposed"):
        return None
    c = conv.conv
    geom = normalize_conv(conv.weight, segment.in_shape, stride=c["stride"], padding=c["padding"],
                          dilation=c["dilation"], groups=c["groups"])
    if math.prod(geom.input_shape) * geom.weight.shape[0] * math.prod(geom.output_spatial) <= DENSE_MAX_ENTRIES:
        return materialize(geom.apply, geom.input_shape)  # small maps: the exact zero-padded operator
    return ConvLayer(dense_kernel(geom.weight.double(), geom.groups), tuple(geom.input_shape[1:]), geom.stride,
                     geom.dilation, geom.pads_begin, geom.pads_end)


#: A chain whose full product already reaches this fraction of the product of its layers' bounds is skipped.
ALIGNED = 0.99


def _apply(items: list, x: torch.Tensor) -> torch.Tensor:
    """The chain's linear items applied in turn to a batch (no activations)."""
    for item in items:
        if isinstance(item, ConvLayer):
            geom = ConvGeometry(item.weight, (item.weight.shape[1], *item.spatial), item.stride, item.dilation,
                                item.pads_begin, item.pads_end, 1)
            x = geom.apply(x.reshape(x.shape[0], *geom.input_shape))
        else:
            x = x.reshape(x.shape[0], -1) @ item.to(x.dtype).T
    return x


def _input_shape(item) -> tuple:
    """The per-sample input shape of a chain item."""
    return (item.weight.shape[1], *item.spatial) if isinstance(item, ConvLayer) else (item.shape[1],)


def _full_product(items: list) -> tuple[float, torch.Tensor]:
    """A few power-iteration steps on the real product W_m ... W_1: its achieved ratio and right vector."""
    from certify.lipschitz.linear_norms import linear_operator_lower

    return linear_operator_lower(lambda x: _apply(items, x), _input_shape(items[0]), iters=8, seed=0)


def path_lower_products(items: list, vector: torch.Tensor, own: list[float | None]) -> list[list[float]]:
    """Lower bounds of every contiguous product ``||W_j ... W_i||`` from one input's path ``u_i = W_i ... W_1 v``:
    ``||u_j|| / ||u_{i-1}||`` (any vector gives one), each single layer also from its own achieved lower bound
    ``own[i]``. One pass through the chain: a screen far cheaper than power steps on every product."""
    norms = [float(torch.linalg.vector_norm(vector.double()))]
    u = vector.double().reshape(1, -1)
    for item in items:
        u = _apply([item], u)
        norms.append(float(torch.linalg.vector_norm(u)))
    m = len(items)
    out = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(i, m):
            out[i][j] = norms[j + 1] / norms[i] if norms[i] > 0 else 0.0
        out[i][i] = max(out[i][i], own[i] or 0.0)
    return out


def bound_chains(records, segments, consumers, graph_outputs, deadline: float | None = None,
                 skipped: list | None = None) -> list:
    """Maximal alternations linear segment, monotone activation, segment, ... (each link feeding only the next),
    with at least two segments, each bounded by :func:`chain_bound` (an ``eclipse.Chain``, method "averaged").
    Chains reached after ``deadline`` (``time.monotonic()``) are skipped (appended to ``skipped``): their layers
    keep the product."""
    from certify.lipschitz import eclipse

    items = {s.input: s for s in segments}
    activations = {r.varying[0]: r for r in records
                   if eclipse._is_activation(r) and len(r.varying) == 1 and r.rule.slope.lo >= 0}

    def private(name: str) -> bool:
        return consumers.get(name, 0) == 1 and name not in graph_outputs

    found, seen = [], set()
    for segment in segments:
        first = None if id(segment) in seen else _item(segment)
        if first is None:
            continue
        chain, linear, betas = [segment], [first], []
        while private(chain[-1].output) and chain[-1].output in activations:
            act = activations[chain[-1].output]
            nxt = items.get(act.outputs[0])
            if nxt is None or not private(act.outputs[0]) or id(nxt) in seen:
                break
            item = _item(nxt)
            if item is None:
                break
            chain += [act, nxt]
            linear.append(item)
            betas.append(act.rule.slope.hi)
            seen.add(id(nxt))
        covered = all(s.matrix is not None and s.matrix.numel() <= eclipse.ECLIPSE_MAX_ENTRIES for s in chain[::2])
        if len(linear) < 2 or covered:
            continue  # ECLipsE-Fast already chains explicit dense layers
        result = eclipse.Chain(chain, method="averaged operators")
        if deadline is not None and time.monotonic() > deadline:
            if skipped is not None:
                skipped.append(result)
            continue
        _bound_chain(result, linear, betas, graph_outputs)
        if result.upper is not None:
            found.append(result)
    return found


def _bound_chain(result, linear: list, betas: list[float], graph_outputs) -> None:
    """The ECLipsE routes first (materialised, Fourier-domain runs), then the averaged-operator bound, whose
    certified products are formed only when the screens from below (`_target`) say it can beat both them and the
    plain product of the layers' bounds."""
    bounds = [s.bound.upper for s in result.items[::2]]
    _materialised_eclipse(result, linear, betas, graph_outputs)
    _conv_runs_eclipse(result, linear, betas, bounds)
    started = time.perf_counter()
    target = _target(result, linear, betas, bounds)
    result.ms += (time.perf_counter() - started) * 1e3
    if target is None:
        return
    diagonal = [b if isinstance(item, torch.Tensor) else None for item, b in zip(linear, bounds)]
    value, ms = chain_bound(linear, betas, target=target, diagonal=diagonal)
    result.ms += ms
    if value is not None and (result.upper is None or value < result.upper):
        result.upper, result.method = value, "averaged operators"


def _target(result, linear: list, betas: list[float], bounds: list[float]) -> float | None:
    """The value the averaged bound must beat, or None when one pass through the chain already shows it cannot:
    the full product reaches ``ALIGNED`` times the product of the layers' bounds (nothing cancels), or the
    averaged bound of lower bounds of the products is no lower than the best so far: first those along the path of
    the full product's power vector (`path_lower_products`), then with power steps on the inner products
    (`power_lower_products`). Only the Fourier-domain estimate of `chain_bound` remains after them."""
    full, vector = _full_product(linear)
    if full >= ALIGNED * math.prod(bounds):
        return None
    target = round_up(math.prod(bounds) * math.prod(betas))
    if result.upper is not None:
        target = min(target, result.upper)
    lower = path_lower_products(linear, vector, [s.bound.lower for s in result.items[::2]])
    if averaged_bound(lower, betas) >= target:
        return None
    if len(linear) <= POWER_SCREEN_MAX and averaged_bound(power_lower_products(linear, lower), betas) >= target:
        return None
    return target


#: Longest chain whose inner contiguous products get their own power steps in the screen (there are m(m-1)/2 - 1).
POWER_SCREEN_MAX = 6


def power_lower_products(items: list, lower: list[list[float]]) -> list[list[float]]:
    """``lower`` with every inner contiguous product (two layers or more, not the whole chain) raised to the
    achieved ratio of a few power-iteration steps on it: still lower bounds, closer to the products' norms."""
    from certify.lipschitz.linear_norms import linear_operator_lower

    m = len(items)
    out = [row[:] for row in lower]
    for i, j in [(a, b) for a in range(m) for b in range(a + 1, m) if (a, b) != (0, m - 1)]:
        value, _ = linear_operator_lower(lambda x, run=items[i:j + 1]: _apply(run, x), _input_shape(items[i]),
                                         iters=8, seed=0)
        out[i][j] = max(out[i][j], value)
    return out


def _materialised_eclipse(chain, linear: list, betas: list[float], graph_outputs) -> None:
    """ECLipsE-Fast on a chain whose convolutions were small enough to materialise (every item an explicit
    matrix): the slopes [0, beta] are folded into the next matrix, as in `certify.lipschitz.eclipse.bound_chain`.
    Kept when below the averaged-operator bound."""
    from certify.lipschitz import eclipse

    if not all(isinstance(m, torch.Tensor) and m.numel() <= eclipse.ECLIPSE_MAX_ENTRIES for m in linear):
        return
    started = time.perf_counter()
    scaled = [linear[0].double()] + [m.double() * beta for m, beta in zip(linear[1:], betas)]
    upper, final = eclipse.eclipse_fast(scaled)
    chain.ms += (time.perf_counter() - started) * 1e3
    if upper is not None and (chain.upper is None or upper < chain.upper):
        chain.upper, chain.method = upper, "ECLipsE-Fast (materialised convolutions)"
        chain.pairs = eclipse.pair_norms(final) if chain.output in graph_outputs else None


def _conv_runs_eclipse(chain, linear: list, betas: list[float], bounds: list[float]) -> None:
    """Split the chain into runs of convolutions whose layers after the first have stride 1, bound each run of two or
    more by ECLipsE-Fast in the Fourier domain (`certify.lipschitz.fourier_eclipse`) and every other item by its own
    bound, and multiply (with the slopes at the splits). Kept when below the chain's bound so far."""
    from certify.lipschitz.fourier_eclipse import conv_eclipse

    if sum(isinstance(item, ConvLayer) for item in linear) < 2:
        return
    started = time.perf_counter()
    total, start, improved = 1.0, 0, False
    while start < len(linear):
        end = start + 1
        while (end < len(linear) and isinstance(linear[start], ConvLayer) and isinstance(linear[end], ConvLayer)
               and max(linear[end].stride) == 1):
            end += 1
        piece = math.prod(bounds[start:end]) * math.prod(betas[start:end - 1])
        if end - start >= 2:
            value = conv_eclipse(linear[start:end], betas[start:end - 1])
            if value is not None and value < piece:
                piece, improved = value, True
        total = round_up(total * piece * (betas[end - 1] if end - 1 < len(betas) else 1.0))
        start = end
    chain.ms += (time.perf_counter() - started) * 1e3
    if improved and (chain.upper is None or total < chain.upper):
        chain.upper, chain.method = total, "ECLipsE-Fast (Fourier-domain convolution runs)"
