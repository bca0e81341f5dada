"""NSGA-II (Deb et al. 2002) over architectures: a small, dependency-free implementation.

The search only ever calls the predictors (milliseconds per population), so a plain numpy
NSGA-II is enough: fast non-dominated sorting, crowding distance, binary tournaments on
(rank, crowding), uniform crossover and per-position mutation over the discrete choices,
and elitist (mu + lambda) survival. Every objective is minimized (negate accuracy).
A latency budget is a constraint handled by Deb's rule: feasible beats infeasible, and among
infeasible the smaller violation wins (``violation`` returns 0 when feasible).
"""
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

Architecture = Tuple[int, ...]


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_sort(objectives: np.ndarray) -> List[List[int]]:
    """Fronts of indices: front 0 is non-dominated, front 1 is dominated only by front 0..."""
    n = len(objectives)
    better = np.all(objectives[:, None] <= objectives[None], -1) & np.any(
        objectives[:, None] < objectives[None], -1)          # better[i, j]: i dominates j
    dominated_by = better.sum(0)
    fronts, current = [], [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in np.nonzero(better[i])[0]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(int(j))
        current = nxt
    return fronts


def crowding_distance(objectives: np.ndarray) -> np.ndarray:
    n, m = objectives.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(objectives[:, k], kind="stable")
        span = objectives[order[-1], k] - objectives[order[0], k]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (objectives[order[2:], k] - objectives[order[:-2], k]) / span
    return distance


@dataclasses.dataclass
class SearchResult:
    front: List[Architecture]              # non-dominated feasible architectures
    front_objectives: np.ndarray
    population: List[Architecture]
    history: List[dict]


def _rank(objectives: np.ndarray, violation: np.ndarray):
    """(rank, crowding) with constraint domination: feasible first, then by violation."""
    rank = np.zeros(len(objectives), int)
    crowd = np.zeros(len(objectives))
    feasible = np.nonzero(violation <= 0)[0]
    offset = 0
    if len(feasible):
        for r, front in enumerate(non_dominated_sort(objectives[feasible])):
            idx = feasible[front]
            rank[idx] = r
            crowd[idx] = crowding_distance(objectives[idx])
            offset = r + 1
    infeasible = np.nonzero(violation > 0)[0]
    order = infeasible[np.argsort(violation[infeasible], kind="stable")]
    rank[order] = offset + np.arange(len(order))
    return rank, crowd


def nsga2(sizes: Sequence[int], objectives: Callable[[List[Architecture]], np.ndarray],
          population: int = 64, generations: int = 40, mutation_rate: Optional[float] = None,
          crossover_rate: float = 0.9, seed: int = 0,
          violation: Optional[Callable[[List[Architecture]], np.ndarray]] = None,
          initial: Sequence[Architecture] = ()) -> SearchResult:
    """Minimizes ``objectives(archs) -> [n, m]`` over tuples with ``arch[p] < sizes[p]``."""
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    mutation_rate = mutation_rate if mutation_rate is not None else 1.0 / len(sizes)
    violation = violation or (lambda archs: np.zeros(len(archs)))
    pop = list(dict.fromkeys(tuple(a) for a in initial))[:population]
    while len(pop) < population:
        pop.append(tuple(int(rng.integers(s)) for s in sizes))
    cache = {}

    def evaluate(archs):
        missing = [a for a in archs if a not in cache]
        if missing:
            for a, o, v in zip(missing, np.asarray(objectives(missing), np.float64),
                               np.asarray(violation(missing), np.float64)):
                cache[a] = (o, v)
        return (np.stack([cache[a][0] for a in archs]), np.asarray([cache[a][1] for a in archs]))

    history = []
    for gen in range(generations):
        obj, vio = evaluate(pop)
        rank, crowd = _rank(obj, vio)

        def tournament():
            i, j = rng.integers(len(pop), size=2)
            return pop[i] if (rank[i], -crowd[i]) < (rank[j], -crowd[j]) else pop[j]
        children = []
        while len(children) < population:
            a, b = np.asarray(tournament()), np.asarray(tournament())
            if rng.random() < crossover_rate:
                mask = rng.random(len(sizes)) < 0.5
                a, b = np.where(mask, a, b), np.where(mask, b, a)
            for child in (a, b):
                mutate = rng.random(len(sizes)) < mutation_rate
                child = np.where(mutate, [rng.integers(s) for s in sizes], child)
                children.append(tuple(int(c) for c in child))
        union = list(dict.fromkeys(pop + children))
        obj, vio = evaluate(union)
        rank, crowd = _rank(obj, vio)
        order = sorted(range(len(union)), key=lambda i: (rank[i], -crowd[i]))
        pop = [union[i] for i in order[:population]]
        history.append({"generation": gen, "evaluated": len(cache),
                        "front_size": int(np.sum(rank[order[:population]] == 0))})
    obj, vio = evaluate(pop)
    feasible = [i for i in range(len(pop)) if vio[i] <= 0]
    front = [feasible[i] for i in non_dominated_sort(obj[feasible])[0]] if feasible else []
    front = sorted(front, key=lambda i: tuple(obj[i]))
    return SearchResult([pop[i] for i in front], obj[front] if front else np.zeros((0, obj.shape[1])),
                        pop, history)


__all__ = ["nsga2", "non_dominated_sort", "crowding_distance", "dominates", "SearchResult"]
