"""The page an approver looks at before approving a version: ``report.html``, written by
``evaluate.py`` beside evaluation.json, one self-contained file (plots and images embedded).

Sections, all on the test split:
- overall: accuracy with its 95% interval (bootstrap percentiles), balanced accuracy, top-5
  accuracy, the expected calibration error;
- per-class accuracy with 95% Wilson intervals (a plot, worst first, and the table);
- the most confused pairs (true -> predicted, count, share of the true class);
- a reliability diagram (accuracy against confidence, 10 bins) and the calibration error;
- against the approved version (when there is one): both accuracies on the same test images,
  the difference with its 95% paired bootstrap interval, McNemar's exact p-value and the images
  only one of the two gets right;
- the worst mistakes: the wrong predictions made with the most confidence, each image beside its
  Grad-CAM heatmap (the last convolutional stage's activations weighted by the gradient of the
  predicted class: where the network looked).

When it has loaded, the page writes ``data-images="loaded/total"`` on its body: a browser test
reads it.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .evaluation import accuracy_interval  # noqa: F401 - (where the tests find it too)

BINS = 10
WORST = 12


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # mathematically the interval holds p; at 0/n and n/n rounding can leave p just outside
    return float(max(0.0, min(p, centre - half))), float(min(1.0, max(p, centre + half)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS):
    """Per bin of confidence: (lower edge, upper edge, count, mean confidence, accuracy), and the
    expected calibration error (the count-weighted gap)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += mask.mean() * abs(conf - acc)
            rows.append((edges[b], edges[b + 1], int(mask.sum()), conf, acc))
    return rows, float(ece)


def confused_pairs(labels: np.ndarray, predicted: np.ndarray, names: list[str],
                   top: int = 10) -> list[tuple[str, str, int, float]]:
    from breedkit.evaluation import confusion

    n = len(names)
    matrix = confusion(labels, predicted, n)
    np.fill_diagonal(matrix, 0)
    support = np.bincount(labels, minlength=n)
    order = np.argsort(-matrix, axis=None)[:top]
    return [(names[i], names[j], int(matrix[i, j]), matrix[i, j] / max(1, support[i]))
            for i, j in zip(*np.unravel_index(order, matrix.shape)) if matrix[i, j] > 0]


def cam_layer(network):
    """(the module whose output Grad-CAM weighs, whether that output is ViT tokens): the last
    stage our classifier's family names (a ResNet's layer4, ConvNeXt's last stage,
    EfficientNetV2's last convolution, the patch tokens entering a ViT's last block) wherever
    the network wraps it; else the network's last convolution, or None."""
    import torch.nn as nn

    for module in network.modules():
        family = getattr(module, "family", None)
        if family is not None and getattr(family, "cam", None) is not None:
            return module.backbone.get_submodule(family.cam(module.backbone)), family.tokens
    convolutions = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    return (convolutions[-1] if convolutions else None), False


def _as_maps(tokens):
    """[N, 1 + h*w, D] tokens (the class token first) as [N, D, h, w] maps."""
    patches = tokens[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    return patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2)


def grad_cam(network, images, classes: list[int]) -> np.ndarray | None:
    """Heatmaps in [0, 1], one per image (N x H x W at the images' size), or None when the
    network has no stage to place a heatmap on."""
    import torch
    import torch.nn.functional as F

    stage, tokens = cam_layer(network)
    if stage is None:
        return None
    kept = {}
    handle = stage.register_forward_hook(lambda _m, _i, out: kept.update(out=out))
    try:
        with torch.enable_grad():
            logits = network(images)
            activations = kept["out"]
            chosen = logits[torch.arange(len(classes)), torch.as_tensor(classes)].sum()
            (grads,) = torch.autograd.grad(chosen, activations)
    finally:
        handle.remove()
    if tokens:
        activations, grads = _as_maps(activations), _as_maps(grads)
    if activations.dim() != 4 or activations.shape[-2:] == (1, 1):
        return None  # not a feature map, or one of a single position: nothing to place
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam.squeeze(1).detach().float()
    top = cam.flatten(1).max(dim=1).values.clamp_min(1e-8)
    return (cam / top[:, None, None]).cpu().numpy()


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(per_class: list, bins: list, ece: float) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    shown = per_class[:60]  # worst first; the table has them all
    fig, ax = plt.subplots(figsize=(7, 0.18 * len(shown) + 1))
    y = np.arange(len(shown))
    acc = np.array([c[1] for c in shown])
    low = acc - np.array([c[2] for c in shown])
    high = np.array([c[3] for c in shown]) - acc
    ax.errorbar(acc, y, xerr=[low, high], fmt="o", markersize=3, capsize=2)
    ax.set_yticks(y, [c[0][:28] for c in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("accuracy (95% Wilson interval)")
    out["per_class"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar([(b[0] + b[1]) / 2 for b in bins], [b[4] for b in bins], width=1 / BINS,
           alpha=0.6, edgecolor="black", label="accuracy")
    ax.plot([b[3] for b in bins], [b[4] for b in bins], "o-", color="C1", label="per bin")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(fontsize=7)
    out["reliability"] = _png(fig)
    return out


def _mistake_png(image, heat, title: str) -> str:
    import matplotlib.pyplot as plt

    rgb = image.permute(1, 2, 0).cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(4.4, 2.4))
    axes[0].imshow(rgb)
    axes[1].imshow(rgb)
    if heat is not None:
        axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    for ax in axes:
        ax.axis("off")
    axes[1].set_title("Grad-CAM" if heat is not None else
                      "Grad-CAM: no spatial detail at this input size", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return _png(fig)


def worst_mistakes(network, dataset, probs: np.ndarray, labels: np.ndarray, names: list[str],
                   device, top: int = WORST) -> list[dict]:
    """The wrong predictions made with the most confidence, with their Grad-CAM images."""
    import torch

    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:top]
    if len(wrong) == 0:
        return []
    images = torch.stack([dataset[int(i)][0] for i in wrong])
    heat = grad_cam(network, images.to(device), [int(predicted[i]) for i in wrong])
    shown = []
    for n, i in enumerate(wrong):
        p = float(probs[i, predicted[i]])
        title = f"true {names[labels[i]]} / predicted {names[predicted[i]]} ({p:.2f})"
        shown.append({"file": dataset.samples[int(i)][0], "true": names[labels[i]],
                      "predicted": names[predicted[i]], "probability": p,
                      "png": _mistake_png(images[n], None if heat is None else heat[n], title)})
    return shown


def _comparison_section(c: dict | None, why_not: str = "") -> str:
    if c is None:
        why = ("No approved version to compare with." if why_not in ("", "no approved version")
               else f"No comparison: {html.escape(why_not)}.")
        return ('<section id="comparison"><h2>Against the approved version</h2>'
                f'<p>{why}</p></section>')
    low, high = c["delta_interval_95"]
    verdict = ("better" if c["better"] else "not better") + (
        ", and the difference is significant (p < 0.05)" if c["mcnemar_p"] < 0.05 else
        ", but the difference could be chance (p >= 0.05)")
    version = html.escape(str(c.get("approved_version") or "?"))
    return f"""<section id="comparison"><h2>Against the approved version ({version})</h2>
<table><tr><th></th><th>this version</th><th>approved version {version}</th></tr>
<tr><td>accuracy on the same {c['images']} test images</td><td>{c['accuracy']:.4f}</td>
<td>{c['approved_accuracy']:.4f}</td></tr>
<tr><td>images only this one gets right</td><td>{c['new_right_approved_wrong']}</td>
<td>{c['new_wrong_approved_right']}</td></tr></table>
<p>Difference <b>{c['accuracy_delta']:+.4f}</b> (95% interval {low:+.4f} to {high:+.4f}, paired
bootstrap); McNemar's exact p = {c['mcnemar_p']:.3g}: {verdict}.</p></section>"""


def write(path: str, *, title: str, probs: np.ndarray, labels: np.ndarray, names: list[str],
          mistakes: list[dict], top5: float | None = None,
          comparison: dict | None = None, why_not: str = "") -> dict:
    """Write report.html; returns its figures (accuracy, interval, balanced accuracy, ECE)."""
    predicted = probs.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    low, high = accuracy_interval(correct)
    per_class = []
    for c, name in enumerate(names):
        n = int((labels == c).sum())
        k = int(((labels == c) & (predicted == c)).sum())
        if n:
            per_class.append((name, k / n, *wilson(k, n), n))
    per_class.sort(key=lambda row: (row[1], row[0]))
    balanced = float(np.mean([row[1] for row in per_class])) if per_class else 0.0
    bins, ece = reliability(probs.max(axis=1), correct)
    plots = _plots(per_class, bins, ece)
    figures = {"accuracy": float(correct.mean()), "interval": [low, high],
               "balanced_accuracy": balanced, "ece": ece}
    e = html.escape
    class_rows = "".join(f"<tr><td>{e(name)}</td><td>{acc:.3f}</td><td>{lo:.3f}-{hi:.3f}</td>"
                         f"<td>{n}</td></tr>" for name, acc, lo, hi, n in per_class)
    pairs = "".join(f"<tr><td>{e(t)}</td><td>{e(p)}</td><td>{k}</td><td>{share:.1%}</td></tr>"
                    for t, p, k, share in confused_pairs(labels, predicted, names))
    gallery = "".join(
        f"<figure><img alt='{e(m['true'])} predicted as {e(m['predicted'])}' "
        f"src='data:image/png;base64,{m['png']}'><figcaption>{e(str(m['file']).split('/')[-1])}"
        f"</figcaption></figure>" for m in mistakes) or "<p>No mistakes on the test split.</p>"
    top5_text = f"; top-5 accuracy {top5:.4f}" if top5 is not None else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:75em}} td,th{{padding:.15em .7em;
text-align:left}} figure{{display:inline-block;margin:.4em}} figcaption{{font-size:75%}}
section{{margin-top:1.5em}}</style></head><body>
<h1>{e(title)}</h1>
<section id="overall"><h2>Overall (test split, {len(labels)} images)</h2>
<p>Accuracy <b>{correct.mean():.4f}</b> (95% interval {low:.4f}-{high:.4f}, bootstrap);
balanced accuracy {balanced:.4f}{top5_text}; expected calibration error {ece:.4f}.</p></section>
{_comparison_section(comparison, why_not)}
<section id="per-class"><h2>Per-class accuracy (worst first)</h2>
<img alt="per-class accuracy" src="data:image/png;base64,{plots['per_class']}">
<table><tr><th>class</th><th>accuracy</th><th>95% interval</th><th>images</th></tr>
{class_rows}</table></section>
<section id="confused"><h2>Most confused pairs</h2>
<table><tr><th>true</th><th>predicted as</th><th>images</th><th>of the true class</th></tr>
{pairs or '<tr><td colspan=4>none</td></tr>'}</table></section>
<section id="calibration"><h2>Calibration</h2>
<img alt="reliability diagram" src="data:image/png;base64,{plots['reliability']}"></section>
<section id="mistakes"><h2>The worst mistakes (most confident), with Grad-CAM</h2>
{gallery}</section>
<script>addEventListener("load", () => {{ const all = [...document.images];
document.body.dataset.images = all.filter(i => i.complete && i.naturalWidth > 0).length +
"/" + all.length; }});</script>
</body></html>"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return figures
