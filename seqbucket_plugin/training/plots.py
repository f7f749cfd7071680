"""Pictures of a run: ``training_curves.png`` and ``lengths.png`` (matplotlib is optional).

Without matplotlib the functions return False and the run says once that plots were skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["plot_lengths", "plot_training_curves", "plots_available"]

_warned = False


def plots_available(log: Callable[[str], None] = print) -> bool:
    """True when matplotlib imports (with the non-interactive Agg backend); says once if not."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        if not _warned:
            log("plots skipped: matplotlib not installed (pip install 'seqbucket_plugin[plot]')")
            _warned = True
        return False
    return True


def plot_training_curves(history: Sequence[dict], metric: str, path: str | os.PathLike,
                         log: Callable[[str], None] = print) -> bool:
    """Train loss (top panel) and dev ``metric`` (key ``dev_<metric>``, bottom panel) per
    evaluation step, saved to ``path``.

    Two panels sharing the step axis rather than two y-axes over one another, so the curves and
    their labels never overlap, with one evaluation or with many; whole-number steps on the axis;
    the best evaluation marked and named in the title.
    """
    if not history or not plots_available(log):
        return False
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in history]
    values = [r.get(f"dev_{metric}") for r in history]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    ax1.plot(steps, [r["train_loss"] for r in history], "o-", color="tab:blue")
    ax1.set_ylabel("train loss")
    ax1.set_title("train loss (mean over the epoch so far)", fontsize=9, loc="left")
    ax2.plot(steps, values, "s-", color="tab:red")
    ax2.set_ylabel(f"dev {metric}")
    ax2.set_xlabel("optimizer step")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = [r for r in history if r.get("best")]
    title = f"training curves: {len(history)} evaluation{'s' if len(history) != 1 else ''}"
    if best:
        b = best[-1]
        ax2.plot([b["step"]], [b[f"dev_{metric}"]], "*", color="black", markersize=12, zorder=3)
        title += f"; best dev {metric} {b[f'dev_{metric}']:.4f} at step {b['step']} (*)"
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.15)  # a single point or a flat line stays inside the frame
    if len(steps) == 1:
        ax2.set_xlim(steps[0] - 1, steps[0] + 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_lengths(lengths: np.ndarray, boundaries: Sequence[int] | None, efficiency: float | None,
                 path: str | os.PathLike, log: Callable[[str], None] = print) -> bool:
    """Histogram of training lengths (tokens) with the bucket upper edges and the padding
    efficiency reached, saved to ``path``."""
    if len(lengths) == 0 or not plots_available(log):
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(lengths, bins=min(100, max(10, int(np.sqrt(len(lengths))))), color="tab:gray")
    boundaries = [] if boundaries is None else [int(b) for b in boundaries]
    for edge in boundaries:
        ax.axvline(edge, color="tab:orange", linewidth=0.6, alpha=0.7)
    title = f"training lengths: {len(lengths):,} examples, {len(boundaries)} bucket edges (orange)"
    if efficiency is not None:
        title += f"\npadding efficiency {efficiency:.1%} (real tokens / padded positions)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
