"""A probe's result shown: the per-layer table, a CSV, and a PNG of the scores per layer when matplotlib is
installed (the `plot` extra)."""

import csv
from pathlib import Path


def layer_name(layer):
    return "embeddings" if layer == 0 else f"layer {layer}"


def format_table(result):
    """The per-layer table, best layer marked, chance level last."""
    acc_name = "accuracy" if result.task == "sentence" else "token acc"
    lines = [f"{'':<12}{acc_name:>18}{result.f1_name:>12}"]
    best = result.best
    for r in result.rows:
        mark = "  <- best" if r is best else ""
        lines.append(f"{layer_name(r.layer):<12}{r.accuracy:>10.3f} ± {r.accuracy_std:.3f}{r.f1:>12.3f}{mark}")
    lines.append(f"{'chance':<12}{result.chance:>10.3f}   (always the most frequent label)")
    return "\n".join(lines)


def write_csv(result, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["layer", "accuracy", "accuracy_std", "entity_f1" if result.task == "token" else "macro_f1"])
        for r in result.rows:
            w.writerow([r.layer, f"{r.accuracy:.6f}", f"{r.accuracy_std:.6f}", f"{r.f1:.6f}"])


def write_plot(result, path):
    """A PNG of the scores per layer when matplotlib is installed (the `plot` extra); otherwise a CSV
    beside the asked path. Returns the path written."""
    path = Path(path)
    try:
        import matplotlib
        matplotlib.use("Agg")                                       # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        csv_path = path.with_suffix(".csv")
        write_csv(result, csv_path)
        return csv_path
    layers = [r.layer for r in result.rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(layers, [r.accuracy for r in result.rows], marker="o", label="accuracy" if result.task == "sentence"
            else "token accuracy")
    ax.plot(layers, [r.f1 for r in result.rows], marker="s", label=result.f1_name)
    ax.axhline(result.chance, color="grey", linestyle="--", label="chance (majority)")
    ax.set_xticks(layers)
    ax.set_xticklabels(["emb" if layer == 0 else str(layer) for layer in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("score")
    ax.set_title(f"{result.task} probe, {result.folds}-fold CV, {result.examples} examples")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
