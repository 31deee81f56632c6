"""Mini-batch training throughput and accuracy: Steward's ``train()`` beside scikit-learn.

Run (from the repository root)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_batch.py [--rounds 3] [--blas-threads 1]

(``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set on some machines and slow numpy down;
the caller unsets them for the benchmark command only, see /work/shared/BENCH.md.)

BLAS threads: this script sets ``OPENBLAS_NUM_THREADS`` (default 1, ``--blas-threads``)
before numpy is imported, for every contestant alike. On this 2-vCPU shared machine a second
OpenBLAS thread makes the small (256 × 64) matrix products of these networks several times
*slower* whenever the machine is busy: the helper thread sleeps between calls and waking it
costs a scheduler slice.

Workloads (features standardised with training statistics):

- digits (sklearn, 1,347 train / 450 test, 64 features, 10 classes): MLP 64-64-10 relu,
  adam lr 1e-3, batch 64, 50 epochs, no L2, no early stopping;
- synthetic (200,000 train / 50,000 test, 32 features, binary labels from a random
  32-16-1 tanh teacher with 5 % label noise): MLP 32-64-1 relu, adam lr 1e-3, batch 256,
  3 epochs.

Contestants: Steward ``train()``; ``MLPClassifier.fit`` with the same architecture, solver,
learning rate, batch size and epochs (``alpha=0``, ``tol=0``, no early stopping);
``MLPClassifier.partial_fit`` called once per batch of the same size (the anchor of BENCH.md
and of the issue's calibration: "plain numpy mini-batch training runs 17 × faster than"
MLPClassifier is the partial_fit figure); ``SGDClassifier`` (linear, log loss, same epochs)
as a linear reference. Steward starts from its own initialisation (PyTorch's ``nn.Linear``
default), scikit-learn from its own (Glorot-uniform), each with seed 0.

Throughput = training samples × epochs / time. Each round runs every contestant once,
interleaved; the table gives medians over rounds with the spread, by wall clock and by
process CPU time (less sensitive to other load on the machine), and the median per-round
ratio to ``MLPClassifier.fit``.
"""

from __future__ import annotations

import os
import sys


def _blas_threads() -> str:
    for i, a in enumerate(sys.argv):
        if a == "--blas-threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--blas-threads="):
            return a.split("=", 1)[1]
    return "1"


os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _blas_threads()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from app.engine.nn.network import accuracy, init_network  # noqa: E402
from app.engine.nn.optim import Optimizer, OptimizerConfig  # noqa: E402
from app.engine.nn.train import train  # noqa: E402

Dataset = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def standardise(Xtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0) + 1e-8
    return ((Xtr - mu) / sd).astype(np.float32), ((Xte - mu) / sd).astype(np.float32)


def digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    Xtr, Xte = standardise(Xtr, Xte)
    return Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64)


def synthetic(n_train: int = 200_000, n_test: int = 50_000, d: int = 32, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_test, d)).astype(np.float32)
    W1 = rng.standard_normal((d, 16)) / np.sqrt(d) * 2
    w2 = rng.standard_normal(16)
    score = np.tanh(X @ W1) @ w2
    y = (score > np.median(score)).astype(np.float32)
    flip = rng.random(y.size) < 0.05
    y[flip] = 1 - y[flip]
    Xtr, Xte = standardise(X[:n_train], X[n_train:])
    return Xtr, y[:n_train], Xte, y[n_train:]


# --------------------------------------------------------------------------- contestants
def steward(task: str, hidden: int, epochs: int, batch: int) -> Callable[[Dataset], float]:
    def run(data: Dataset) -> float:
        Xtr, ytr, Xte, yte = data
        out = 1 if task == "binary" else int(ytr.max()) + 1
        net = init_network(task, "relu", Xtr.shape[1], out, [hidden], 0)
        opt = Optimizer(OptimizerConfig("adam", 1e-3), net)
        train(net, opt, Xtr, ytr, epochs=epochs, batch_size=batch, shuffle_seed=0)
        return accuracy(task, net.forward(Xte), yte)  # like sklearn's score(): no test loss

    return run


def mlp_fit(hidden: int, epochs: int, batch: int) -> Callable[[Dataset], float]:
    def run(data: Dataset) -> float:
        from sklearn.neural_network import MLPClassifier

        Xtr, ytr, Xte, yte = data
        m = MLPClassifier(
            (hidden,),
            activation="relu",
            solver="adam",
            learning_rate_init=1e-3,
            batch_size=batch,
            max_iter=epochs,
            alpha=0.0,
            tol=0.0,
            n_iter_no_change=epochs + 1,
            shuffle=True,
            random_state=0,
        )
        m.fit(Xtr, ytr)
        return float(m.score(Xte, yte))

    return run


def mlp_partial_fit(hidden: int, epochs: int, batch: int) -> Callable[[Dataset], float]:
    def run(data: Dataset) -> float:
        from sklearn.neural_network import MLPClassifier

        Xtr, ytr, Xte, yte = data
        m = MLPClassifier(
            (hidden,), activation="relu", solver="adam", learning_rate_init=1e-3, alpha=0.0, random_state=0
        )
        classes = np.unique(ytr)
        rng = np.random.default_rng(0)
        for _ in range(epochs):
            order = rng.permutation(len(ytr))
            for s in range(0, len(ytr), batch):
                idx = order[s : s + batch]
                m.partial_fit(Xtr[idx], ytr[idx], classes=classes)
        return float(m.score(Xte, yte))

    return run


def sgd_classifier(epochs: int) -> Callable[[Dataset], float]:
    def run(data: Dataset) -> float:
        from sklearn.linear_model import SGDClassifier

        Xtr, ytr, Xte, yte = data
        m = SGDClassifier(loss="log_loss", max_iter=epochs, tol=None, random_state=0)
        m.fit(Xtr, ytr)
        return float(m.score(Xte, yte))

    return run


# --------------------------------------------------------------------------- main
def bench(
    title: str, data: Dataset, contestants: list[tuple[str, Callable, int]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Run and print; returns ``{contestant: (median wall ratio to Steward, test accuracy)}``."""
    n = len(data[1])
    wall: dict[str, list[float]] = {c[0]: [] for c in contestants}
    cpu: dict[str, list[float]] = {c[0]: [] for c in contestants}
    acc: dict[str, float] = {}
    for _ in range(rounds):
        for name, run, epochs in contestants:
            t0, c0 = time.perf_counter(), time.process_time()
            acc[name] = run(data)
            wall[name].append(n * epochs / (time.perf_counter() - t0))
            cpu[name].append(n * epochs / (time.process_time() - c0))
    anchor = next(c[0] for c in contestants if c[0].startswith("sklearn MLPClassifier.fit"))
    print(f"\n{title}")
    hdr = (
        f"{'contestant':38s} {'samples/s wall':>15s} {'spread':>21s} {'samples/s CPU':>14s} "
        f"{'× fit wall':>11s} {'× fit CPU':>10s} {'test acc':>9s}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, _, _ in contestants:
        w, c = wall[name], cpu[name]
        rw = statistics.median(a / b for a, b in zip(w, wall[anchor], strict=True))
        rc = statistics.median(a / b for a, b in zip(c, cpu[anchor], strict=True))
        print(
            f"{name:38s} {statistics.median(w):15,.0f} {f'{min(w):,.0f}–{max(w):,.0f}':>21s} "
            f"{statistics.median(c):14,.0f} {rw:10.2f}× {rc:9.2f}× {acc[name]:9.4f}"
        )
    me = contestants[0][0]
    return {
        name: (statistics.median(a / b for a, b in zip(wall[me], wall[name], strict=True)), acc[name])
        for name, _, _ in contestants
    }


def verdicts(workload: str, res: dict[str, tuple[float, float]]) -> list[str]:
    """Steward vs each MLPClassifier anchor: speed ratio (≥ 5×?) and accuracy (≥?)."""
    acc = res["steward train()"][1]
    out = []
    for name, (ratio, other) in res.items():
        if "MLPClassifier" in name:
            ok = ratio >= 5 and acc >= other
            out.append(
                f"{workload}: vs {name}: {ratio:.2f}× at accuracy {acc:.4f} vs {other:.4f} → "
                f"{'meets' if ok else 'MISSES'} ≥ 5× at equal or better accuracy"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blas-threads", default="1", help="OPENBLAS_NUM_THREADS for every contestant")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # sklearn's ConvergenceWarning at a fixed epoch budget
    print(
        f"numpy {np.__version__}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; "
        f"{args.rounds} interleaved rounds; medians (spread = min–max over rounds)"
    )
    lines: list[str] = []
    if not args.skip_digits:
        e = 50
        res = bench(
            f"digits: MLP 64-64-10 relu, adam 1e-3, batch 64, {e} epochs",
            digits(),
            [
                ("steward train()", steward("multiclass", 64, e, 64), e),
                ("sklearn MLPClassifier.fit", mlp_fit(64, e, 64), e),
                ("sklearn MLPClassifier.partial_fit(64)", mlp_partial_fit(64, e, 64), e),
                ("sklearn SGDClassifier (linear)", sgd_classifier(e), e),
            ],
            args.rounds,
        )
        lines += verdicts("digits", res)
    if not args.skip_synthetic:
        e = 3
        res = bench(
            f"synthetic 200k × 32 binary: MLP 32-64-1 relu, adam 1e-3, batch 256, {e} epochs",
            synthetic(),
            [
                ("steward train()", steward("binary", 64, e, 256), e),
                ("sklearn MLPClassifier.fit", mlp_fit(64, e, 256), e),
                ("sklearn MLPClassifier.partial_fit(256)", mlp_partial_fit(64, e, 256), e),
                ("sklearn SGDClassifier (linear)", sgd_classifier(e), e),
            ],
            args.rounds,
        )
        lines += verdicts("synthetic", res)
    print("\ntarget: steward train() ≥ 5× MLPClassifier throughput at equal or better test accuracy")
    for line in lines:
        print(" ", line)


if __name__ == "__main__":
    main()
