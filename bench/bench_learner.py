"""Online learner throughput: Steward's OnlineLearner beside River and scikit-learn.

Run (from the repository root)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_learner.py [--rounds 5]

(``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set on some machines and slow numpy down;
the caller unsets them for the benchmark command only, see /work/shared/BENCH.md.)

Stream: 32 standard-normal features, binary label from a fixed logistic model with noise,
float32, generated once before any timing. Contestants, one sample per step:

- Steward ``OnlineLearner`` -- logistic (no hidden layer, started at 0 like the others) and
  MLP 32-64-1 (relu, seeded init), sgd lr 0.01; each step includes the prequential scoring,
  metrics and guard;
- naive numpy loops (the same math written plainly: row view, ``@``, temporaries) -- what the
  fast path is for;
- River ``LogisticRegression.learn_one`` (sgd lr 0.01) fed dicts prepared beforehand (the
  anchor), and fed from the numpy rows (dict conversion inside the loop);
- scikit-learn ``SGDClassifier.partial_fit`` (log loss, constant lr 0.01), one sample per call.

Timings are learn-only for the others (Steward's steps always score first, which only
favours the others). Each round runs every contestant once, interleaved (A B A B …); the
table gives the median over rounds of steps/s with the spread (min–max), and the median of
the per-round ratio to River ``learn_one`` on prepared dicts. Prequential ("test-then-train")
accuracy is measured separately on the same first ``--acc-samples`` samples for every
contestant.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from app.engine.nn.network import init_network
from app.engine.nn.online import OnlineLearner
from app.engine.nn.optim import OptimizerConfig

D = 32
LR = 0.01


def make_stream(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)).astype(np.float32)
    w = rng.standard_normal(D) / np.sqrt(D) * 3
    y = (X @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.float32)
    return X, y


# --------------------------------------------------------------------------- contestants
def steward(hidden: list[int]) -> Callable[[np.ndarray, np.ndarray], float | None]:
    def run(X: np.ndarray, y: np.ndarray) -> float | None:
        net = init_network("binary", "relu", D, 1, hidden, 0)
        if not hidden:  # start the linear model at 0 (weights and bias), like River and the naive loop
            net.weights[0][...] = 0
            net.biases[0][...] = 0
        learner = OnlineLearner(net, OptimizerConfig("sgd", LR))
        res = learner.learn_many(X, y)
        assert res.pause is None
        return learner.metrics()["accuracy"]

    return run


def naive_logistic(X: np.ndarray, y: np.ndarray) -> float:
    w = np.zeros(D, np.float32)
    b = 0.0
    correct = 0
    for x, t in zip(X, y.tolist(), strict=True):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        correct += (p >= 0.5) == t
        g = p - t
        w -= LR * g * x
        b -= LR * g
    return correct / len(y)


def naive_mlp(X: np.ndarray, y: np.ndarray) -> float:
    net = init_network("binary", "relu", D, 1, [64], 0)
    W1, b1, W2, b2 = net.weights[0], net.biases[0], net.weights[1][0], float(net.biases[1][0])
    correct = 0
    for x, t in zip(X, y.tolist(), strict=True):
        h = np.maximum(W1 @ x + b1, 0)
        p = 1.0 / (1.0 + np.exp(-(W2 @ h + b2)))
        correct += (p >= 0.5) == t
        d = p - t
        dh = d * W2 * (h > 0)
        W2 -= LR * d * h
        b2 -= LR * d
        W1 -= LR * np.outer(dh, x)
        b1 -= LR * dh
    return correct / len(y)


def river_model():
    from river import linear_model, optim

    return linear_model.LogisticRegression(optimizer=optim.SGD(LR))


def river_dicts(prepared: list[dict]) -> Callable[[np.ndarray, np.ndarray], None]:
    def run(X: np.ndarray, y: np.ndarray) -> None:
        model = river_model()
        learn = model.learn_one
        for xd, t in zip(prepared[: len(y)], y.tolist(), strict=True):
            learn(xd, t == 1.0)

    return run


def river_numpy(X: np.ndarray, y: np.ndarray) -> None:
    model = river_model()
    learn = model.learn_one
    keys = [f"x{i}" for i in range(D)]
    for row, t in zip(X, y.tolist(), strict=True):
        learn(dict(zip(keys, row.tolist(), strict=True)), t == 1.0)


def river_prequential(prepared: list[dict], y: np.ndarray) -> float:
    model = river_model()
    correct = 0
    for xd, t in zip(prepared, y.tolist(), strict=True):
        correct += model.predict_one(xd) == (t == 1.0)
        model.learn_one(xd, t == 1.0)
    return correct / len(y)


def sk_model():
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", learning_rate="constant", eta0=LR, alpha=0.0)


def sklearn_partial_fit(X: np.ndarray, y: np.ndarray) -> None:
    model = sk_model()
    classes = np.array([0.0, 1.0], np.float32)
    for i in range(len(y)):
        model.partial_fit(X[i : i + 1], y[i : i + 1], classes=classes)


def sklearn_prequential(X: np.ndarray, y: np.ndarray) -> float:
    model = sk_model()
    classes = np.array([0.0, 1.0], np.float32)
    correct = 0
    for i in range(len(y)):
        if i:
            correct += model.predict(X[i : i + 1])[0] == y[i]
        model.partial_fit(X[i : i + 1], y[i : i + 1], classes=classes)
    return correct / len(y)


# --------------------------------------------------------------------------- the runtime
RUNTIME_CASES = [
    # label, hidden, spec overrides (the default spec: checkpoint_every 1,000, checkpoint_seconds 1)
    ("logistic 32, default spec", [], {}),
    ("logistic 32, count only (checkpoint_seconds 0)", [], {"checkpoint_seconds": 0}),
    ("MLP 32-64-1 relu, default spec", [64], {}),
]


def runtime_section(rounds: int, n_logistic: int, n_mlp: int) -> None:
    """Steward's learner runtime draining a log (SQLite reads in 1,000-sample rows as
    ``/update`` writes them, one step per sample, progress publishes, checkpoints with
    fsynced blobs) beside the engine alone on the same stream, interleaved per round."""
    import tempfile
    from pathlib import Path

    from app.context import AppContext
    from app.core.migrations import upgrade
    from app.core.settings import Settings
    from app.online.learner import LearnerRuntime
    from app.registry.schemas import ModelCreate

    print(
        f"\nLearner runtime at the model's spec vs the engine alone on the same stream; "
        f"{rounds} interleaved rounds (engine, runtime)"
    )
    print("(the runtime: SQLite log read in 1,000-sample rows, steps, progress, online versions with fsynced blobs)\n")
    hdr = (
        f"{'case':48s} {'samples':>9s} {'runtime steps/s':>16s} {'engine steps/s':>15s} "
        f"{'ratio (min–max)':>20s} {'versions':>9s}"
    )
    print(hdr)
    print("-" * len(hdr))
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="steward-bench-learner-") as tmp:
        settings = Settings(data_dir=Path(tmp), run_worker=False, run_learner=False)
        upgrade(settings.url)
        ctx = AppContext.build(settings)
        try:
            for k, (label, hidden, over) in enumerate(RUNTIME_CASES):
                n = n_mlp if hidden else n_logistic
                X, y = make_stream(n, seed=k)
                rt_rates, eng_rates, ratios, versions = [], [], [], []
                for r in range(rounds):
                    name = f"case-{k}-{r}"
                    ctx.models.create(
                        ModelCreate(
                            name=name, task="binary", input_dim=D, hidden=hidden, guard={"enabled": False}, **over
                        )
                    )
                    t = ctx.online.target(name)
                    for lo in range(0, n, 1000):  # one row per 1,000-sample /update request
                        ctx.online.append(t, X[lo : lo + 1000], y[lo : lo + 1000])
                    net = init_network("binary", "relu", D, 1, hidden, 0)
                    eng = OnlineLearner(net, OptimizerConfig("sgd", LR))
                    t0 = time.perf_counter()
                    eng.learn_many(X, y)
                    de = time.perf_counter() - t0
                    rt = LearnerRuntime(ctx.db, ctx.settings, ctx.blobs, ctx.versions, ctx.metrics, owner=name)
                    rt._claim()  # leases and the first load outside the timing
                    t0 = time.perf_counter()
                    while True:  # until the whole log is applied (a checkpoint waiting for its time is not awaited)
                        rt.run_once()
                        h = next((x for x in rt.held.values() if x.name == name), None)
                        if h is not None and h.applied_through == n - 1:
                            break
                    dt = time.perf_counter() - t0
                    versions.append(h.version - 1)
                    rt.stop()
                    ctx.models.delete(name)
                    rt_rates.append(n / dt)
                    eng_rates.append(n / de)
                    ratios.append(de / dt)
                ratio = statistics.median(ratios)
                print(
                    f"{label:48s} {n:>9,} {statistics.median(rt_rates):>16,.0f} {statistics.median(eng_rates):>15,.0f} "
                    f"{f'{ratio:.2f} ({min(ratios):.2f}–{max(ratios):.2f})':>20s} {statistics.median(versions):>9.0f}"
                )
                if over == {}:
                    verdicts.append(
                        f"{label}: runtime ÷ engine {ratio:.2f} (target ≥ 0.80) {'PASS' if ratio >= 0.8 else 'FAIL'}"
                    )
        finally:
            ctx.close()
    print("\ntargets (runtime at the default spec ÷ the engine alone ≥ 0.8):")
    for v in verdicts:
        print("  " + v)


def shadow_section(rounds: int, n: int) -> None:
    """The learner runtime of an MLP 32-64-1 with 0, 1 and 3 shadows (each scores both the
    candidate and the version it is compared with on every sample), beside the cost of the
    forward passes the shadows add, measured alone on the same stream in the same batches."""
    import tempfile
    from pathlib import Path

    from app.context import AppContext
    from app.core.migrations import upgrade
    from app.core.settings import Settings
    from app.online.learner import LearnerRuntime
    from app.registry.schemas import ModelCreate

    print(f"\nShadows: the learner runtime (MLP 32-64-1, {n:,} samples) with 0, 1 and 3 shadows; {rounds} rounds\n")
    hdr = f"{'shadows':>8s} {'steps/s':>10s} {'time ÷ 0 shadows':>17s} {'bound: 1 + forwards ÷ learning':>31s}"
    print(hdr)
    print("-" * len(hdr))
    X, y = make_stream(n, seed=7)
    with tempfile.TemporaryDirectory(prefix="steward-bench-shadows-") as tmp:
        settings = Settings(data_dir=Path(tmp), run_worker=False, run_learner=False)
        upgrade(settings.url)
        ctx = AppContext.build(settings)
        try:
            times: dict[int, list[float]] = {0: [], 1: [], 3: []}
            fwd: list[float] = []
            for r in range(rounds):
                for k in (0, 1, 3):
                    name = f"shadow-{k}-{r}"
                    ctx.models.create(
                        ModelCreate(name=name, task="binary", input_dim=D, hidden=[64], guard={"enabled": False})
                    )
                    if k:  # k candidates: version 1's parameters imported again as versions 2 …
                        blob = b"".join(ctx.models.download(name, 1)[2])
                        for _ in range(k):
                            v = ctx.migration.import_version(name, blob, onnx_file=False).version
                            ctx.feedback.put_shadow(name, v, "latest")
                    t = ctx.online.target(name)
                    for lo in range(0, n, 1000):
                        ctx.online.append(t, X[lo : lo + 1000], y[lo : lo + 1000])
                    rt = LearnerRuntime(ctx.db, ctx.settings, ctx.blobs, ctx.versions, ctx.metrics, owner=name)
                    rt._claim()
                    t0 = time.perf_counter()
                    while True:  # until the whole log is applied (and shadowed)
                        rt.run_once()
                        h = next((x for x in rt.held.values() if x.name == name), None)
                        if h is not None and h.applied_through == n - 1:
                            break
                    times[k].append(time.perf_counter() - t0)
                    assert len(h.shadows) == k and all(sh.sums["n"] == n for sh in h.shadows.values())
                    if k == 1:
                        net = next(iter(h.shadows.values())).net
                        t0 = time.perf_counter()
                        for lo in range(0, n, 1000):
                            net.forward(X[lo : lo + 1000])
                        fwd.append(2 * (time.perf_counter() - t0))  # candidate and compared version
                    rt.stop()
                    ctx.models.delete(name)
        finally:
            ctx.close()
    base = statistics.median(times[0])
    f = statistics.median(fwd)
    for k in (0, 1, 3):
        tk = statistics.median(times[k])
        bound = 1 + k * f / base
        verdict = "" if k == 0 else ("within" if tk / base <= bound * 1.1 else "OVER")
        print(f"{k:>8d} {n / tk:>10,.0f} {tk / base:>17.2f} {bound:>31.2f}  {verdict}")


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=200_000, help="samples per run for the fast contestants")
    ap.add_argument("--acc-samples", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter streams")
    ap.add_argument("--only", choices=["engine", "runtime", "shadows"], help="run one of the sections")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.quick:
        args.rounds = min(args.rounds, 3)
        args.n = min(args.n, 100_000)
    if args.only in (None, "engine"):
        engine_section(args)
    big = 1 if args.quick else 2
    if args.only in (None, "runtime"):
        runtime_section(args.rounds, n_logistic=big * 1_000_000, n_mlp=big * 250_000)
    if args.only in (None, "shadows"):
        shadow_section(args.rounds, n=big * 100_000)


def engine_section(args: argparse.Namespace) -> None:

    X, y = make_stream(max(args.n, args.acc_samples))
    keys = [f"x{i}" for i in range(D)]
    prepared = [dict(zip(keys, row, strict=True)) for row in X.tolist()]
    n = args.n
    try:
        import river  # noqa: F401

        have_river = True
    except ImportError:
        have_river = False
    try:
        import sklearn  # noqa: F401

        have_sk = True
    except ImportError:
        have_sk = False

    # (name, run, samples per run)
    contestants: list[tuple[str, Callable, int]] = [
        ("steward logistic (sgd)", steward([]), n),
        ("steward MLP 32-64-1 (sgd)", steward([64]), n // 2),
        ("naive numpy logistic", naive_logistic, n // 4),
        ("naive numpy MLP 32-64-1", naive_mlp, n // 8),
    ]
    if have_river:
        contestants += [
            ("river LogReg learn_one (dicts)", river_dicts(prepared), n // 2),
            ("river LogReg learn_one (numpy rows)", river_numpy, n // 8),
        ]
    if have_sk:
        contestants.append(("sklearn SGDClassifier partial_fit(1)", sklearn_partial_fit, min(3000, n)))

    rates: dict[str, list[float]] = {c[0]: [] for c in contestants}
    for _ in range(args.rounds):
        for name, run, m in contestants:
            t0 = time.perf_counter()
            run(X[:m], y[:m])
            rates[name].append(m / (time.perf_counter() - t0))

    na = args.acc_samples
    Xa, ya = X[:na], y[:na]
    acc = {
        "steward logistic (sgd)": steward([])(Xa, ya),
        "steward MLP 32-64-1 (sgd)": steward([64])(Xa, ya),
        "naive numpy logistic": naive_logistic(Xa, ya),
        "naive numpy MLP 32-64-1": naive_mlp(Xa, ya),
    }
    if have_river:
        acc["river LogReg learn_one (dicts)"] = acc["river LogReg learn_one (numpy rows)"] = river_prequential(
            prepared[:na], ya
        )
    if have_sk:
        acc["sklearn SGDClassifier partial_fit(1)"] = sklearn_prequential(Xa, ya)

    anchor = "river LogReg learn_one (dicts)" if have_river else None
    print(f"\nOnline learning, {D} features, binary, one step per sample; {args.rounds} interleaved rounds")
    print(f"numpy {np.__version__}; prequential accuracy over the first {na} samples of the same stream\n")
    hdr = f"{'contestant':40s} {'steps/s (median)':>17s} {'spread (min–max)':>22s} {'× river':>9s} {'preq. acc':>10s}"
    print(hdr)
    print("-" * len(hdr))
    for name, _, _ in contestants:
        r = rates[name]
        ratio = ""
        if anchor:
            ratio = f"{statistics.median(a / b for a, b in zip(r, rates[anchor], strict=True)):8.2f}×"
        print(
            f"{name:40s} {statistics.median(r):17,.0f} {f'{min(r):,.0f}–{max(r):,.0f}':>22s} {ratio:>9s} "
            f"{acc.get(name, float('nan')):10.4f}"
        )
    print("\ntargets: steward logistic ≥ 2× river learn_one; steward MLP 32-64-1 ≥ 60,000 steps/s")


if __name__ == "__main__":
    main()
