"""Units versus random directions: are a hidden layer's units more meaningful than random directions in its space?

Szegedy et al. 2013 ("Intriguing properties of neural networks", section 3) collected, over held-out data, the
inputs maximising ``<phi(x), e_i>`` for units ``e_i`` and ``<phi(x), v>`` for random ``v``, and found both sets
equally coherent. This module measures that instead of showing pictures only: for each direction, the label
purity of its top-N inputs (the fraction sharing their majority label) and the mean pairwise cosine similarity of
those inputs' activations ``phi(x)`` at the node; the unit and random distributions are compared by their means and
a seeded two-sided permutation test on the difference of means.

The dataset is streamed through the converted graph in batches, twice (unit variances, then projections), keeping
only a running top-N per direction, so memory stays bounded by the batch and the directions, not the dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from certify.errors import ModelRejected

WEIGHTED_OPS = ("Gemm", "MatMul", "Conv")
MAX_IMAGE_VALUES = 65_536  # inputs carried in the report for drawing, in total; larger inputs carry indices only
UNIT_CHOICES = ("variance", "random")


@dataclass
class Direction:
    kind: str  # "unit" or "random"
    unit: int | None  # the unit's index in the flattened activation, for kind "unit"
    top: list[int]  # dataset indices of the top-N inputs, highest projection first
    labels: list[int]
    scores: list[float]  # <phi(x), direction> of those inputs
    purity: float
    cosine: float


@dataclass
class Comparison:
    unit_mean: float
    random_mean: float
    difference: float  # unit_mean - random_mean
    p_value: float  # two-sided permutation test of the difference of means


@dataclass
class UnitsResult:
    node: str
    width: int  # activation values per input at the node
    samples: int
    top_n: int
    seed: int
    unit_choice: str
    permutations: int
    coherence: str = "label purity of the top-N; mean pairwise cosine similarity of their activations at the node"
    directions: list[Direction] = field(default_factory=list)
    purity: Comparison | None = None
    cosine: Comparison | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def candidate_nodes(graph) -> list[str]:
    """Tensor names computed by the graph (node outputs), in execution order, excluding the graph's outputs."""
    outputs = set(graph.output_names)
    return [name for _, _, names in graph.steps() for name in names if name and name not in outputs]


def default_node(graph) -> str:
    """The data input of the last weighted node (the logits layer): the last hidden representation."""
    inputs = set(graph.input_names)
    for module, names, _ in reversed(list(graph.steps())):
        if module.op_type in WEIGHTED_OPS and names and names[0] not in inputs and graph.constant(names[0]) is None:
            return names[0]
    raise ModelRejected("no_hidden_layer", "the model has no hidden layer before a Gemm, MatMul or Conv; "
                        "name one with --node")


def activations(graph, x: np.ndarray, node: str, batch_size: int = 256):
    """Yield ``(offset, phi)`` per batch: the node's activations, flattened to (batch, width), as float64."""
    import torch

    from certify.convert import pad_batch

    dtype = graph.input_dtype()
    if graph.reshapes_by_batch():  # a graph exported for a fixed batch runs that many samples at a time
        batch_size = graph.fixed_batch
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(dtype)
            n = len(xb)
            if graph.reshapes_by_batch():  # the last chunk padded to the batch, the padding dropped
                xb = pad_batch(xb, batch_size)
            for _, _, outputs, env in graph.execute(xb, release=True):
                if node in outputs:
                    yield start, env[node].reshape(len(xb), -1)[:n].double().numpy()
                    break


def _variance(graph, x, node, batch_size, progress) -> np.ndarray:
    count, mean, m2 = 0, None, None
    for start, phi in activations(graph, x, node, batch_size):  # Chan et al.'s parallel update of mean and M2
        progress(0.5 * (start + len(phi)) / len(x), "unit variances")
        n, batch_mean = len(phi), phi.mean(0)
        batch_m2 = ((phi - batch_mean) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = n, batch_mean, batch_m2
            continue
        delta = batch_mean - mean
        total = count + n
        mean = mean + delta * n / total
        m2 = m2 + batch_m2 + delta**2 * count * n / total
        count = total
    return m2 / max(count, 1)


def purity(labels: np.ndarray) -> float:
    """Fraction of ``labels`` equal to their most frequent value."""
    return float(np.bincount(labels).max() / len(labels))


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of rows (a zero row has similarity 0 with everything)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    sims = unit @ unit.T
    n = len(vectors)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1))) if n > 1 else 1.0


def permutation_test(a: np.ndarray, b: np.ndarray, permutations: int, seed: int) -> Comparison:
    """Two-sided permutation test of mean(a) - mean(b); p = (extreme + 1) / (permutations + 1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    observed = a.mean() - b.mean()
    pooled = np.concatenate([a, b])
    rng = np.random.default_rng(seed)
    extreme = 0
    for _ in range(permutations):
        perm = rng.permutation(pooled)
        extreme += abs(perm[:len(a)].mean() - perm[len(a):].mean()) >= abs(observed) - 1e-12
    return Comparison(unit_mean=float(a.mean()), random_mean=float(b.mean()), difference=float(observed),
                      p_value=float((extreme + 1) / (permutations + 1)))


def units_vs_random(graph, x: np.ndarray, y: np.ndarray, node: str | None = None, directions: int = 16,
                    top_n: int = 8, seed: int = 0, unit_choice: str = "variance", permutations: int = 2000,
                    batch_size: int = 256, progress=None) -> UnitsResult:
    """Compare ``directions`` units of ``node`` with as many seeded random unit-norm directions (see module doc).

    ``progress(fraction, message)``, when given, is called after every batch (it may raise to stop the run)."""
    progress = progress or (lambda fraction, message="": None)
    candidates = candidate_nodes(graph)
    node = node or default_node(graph)
    if node not in candidates:
        shown = ", ".join(candidates[:30]) + (", ..." if len(candidates) > 30 else "")
        raise ModelRejected("unknown_node", f"no node output named {node!r}; candidates: {shown}")
    if unit_choice not in UNIT_CHOICES:
        raise ModelRejected("bad_argument", f"unit choice {unit_choice!r}; one of {', '.join(UNIT_CHOICES)}")
    if not 2 <= top_n <= len(x):
        raise ModelRejected("bad_argument", f"top {top_n}: need 2 <= top <= the {len(x)} samples")
    if directions < 2:
        raise ModelRejected("bad_argument", "need at least 2 directions of each kind")
    variance = _variance(graph, x, node, batch_size, progress)
    width = len(variance)
    k = min(directions, width)
    rng = np.random.default_rng(seed)
    if unit_choice == "variance":
        units = np.argsort(-variance, kind="stable")[:k]
    else:
        units = np.sort(rng.choice(width, size=k, replace=False))
    randoms = rng.standard_normal((k, width))
    randoms /= np.linalg.norm(randoms, axis=1, keepdims=True)
    basis = np.concatenate([np.zeros((k, width)), randoms])  # (2k, width); no width x width identity
    basis[np.arange(k), units] = 1.0
    best_scores = np.full((2 * k, 0), -np.inf)
    best_index = np.zeros((2 * k, 0), dtype=np.int64)
    best_phi = np.zeros((2 * k, 0, width))
    for start, phi in activations(graph, x, node, batch_size):
        progress(0.5 + 0.5 * (start + len(phi)) / len(x), "top inputs per direction")
        scores = np.concatenate([best_scores, (phi @ basis.T).T], axis=1)
        index = np.concatenate([best_index, np.broadcast_to(np.arange(start, start + len(phi)), (2 * k, len(phi)))],
                               axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]
        kept = best_scores.shape[1]
        best_phi = np.stack([np.where((keep[d] < kept)[:, None], best_phi[d][np.minimum(keep[d], max(kept - 1, 0))]
                                      if kept else 0.0, phi[np.maximum(keep[d] - kept, 0)]) for d in range(2 * k)])
        best_scores = np.take_along_axis(scores, keep, 1)
        best_index = np.take_along_axis(index, keep, 1)
    result = UnitsResult(node=node, width=width, samples=len(x), top_n=top_n, seed=seed, unit_choice=unit_choice,
                         permutations=permutations)
    for d in range(2 * k):
        labels = np.asarray(y)[best_index[d]].astype(np.int64)
        result.directions.append(Direction(
            kind="unit" if d < k else "random", unit=int(units[d]) if d < k else None,
            top=[int(i) for i in best_index[d]], labels=[int(v) for v in labels],
            scores=[float(s) for s in best_scores[d]], purity=purity(labels),
            cosine=mean_pairwise_cosine(best_phi[d])))
    unit_dirs, random_dirs = result.directions[:k], result.directions[k:]
    result.purity = permutation_test([d.purity for d in unit_dirs], [d.purity for d in random_dirs], permutations,
                                     seed)
    result.cosine = permutation_test([d.cosine for d in unit_dirs], [d.cosine for d in random_dirs], permutations,
                                     seed + 1)
    return result


def report_section(result: UnitsResult, x: np.ndarray) -> dict:
    """The report's ``analyses.units`` entry: the result, plus the top inputs themselves when they are small enough
    to draw (``inputs``: dataset index -> flat values rounded to 4 decimals; ``input_shape``)."""
    section = result.to_dict()
    shown = sorted({i for d in result.directions for i in d.top})
    sample_size = int(np.prod(x.shape[1:]))
    section["input_shape"] = [int(d) for d in x.shape[1:]]
    if len(shown) * sample_size <= MAX_IMAGE_VALUES:
        section["inputs"] = {str(i): [round(float(v), 4) for v in x[i].ravel()] for i in shown}
    return section
