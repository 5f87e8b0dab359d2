"""Chart of the CPU benchmark: docs/performance.png from benchmarks/results/cpu.json.

    python scripts/plot_performance.py [results.json] [out.png]
    python scripts/plot_performance.py --markdown [results.json]   # the tables of docs/performance.md

Left: how many times faster gradstep's default step is than each torch.optim implementation
(GPT-2-like float32 set). Middle: the same against torch's fastest implementation on ~2000 small
tensors. Right: gradstep's step time as a fraction of the roofline (an ideal kernel moving the
same bytes), float32 and bfloat16.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCH = ["torch for-loop", "torch foreach", "torch fused", "torch default"]


def _by(rows, pset):
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["param_set"].startswith(pset):
            out.setdefault(r["algorithm"], {})[r["impl"]] = r
    return out


def _title(name, data):
    r = next(iter(next(iter(data.values())).values()))
    return f"{name}: {r['n_params'] / 1e6:.1f}M params in {r['n_tensors']} tensors"


def main(src: str | None = None, dst: str | None = None) -> None:
    src = Path(src or ROOT / "benchmarks/results/cpu.json")
    dst = Path(dst or ROOT / "docs/performance.png")
    result = json.loads(src.read_text())
    rows = result["rows"]
    gpt, small, bf16 = _by(rows, "gpt2-like fp32"), _by(rows, "small"), _by(rows, "gpt2-like bf16")
    algos = list(gpt)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [2.2, 1.2, 1.2]})

    ax = axes[0]
    width = 0.2
    for k, impl in enumerate(TORCH):
        xs, ys = [], []
        for i, a in enumerate(algos):
            if impl in gpt[a]:
                xs.append(i + (k - 1.5) * width)
                ys.append(gpt[a][impl]["vs_gradstep"])
        ax.bar(xs, ys, width, label=impl.replace("torch ", "torch.optim "))
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(algos)), algos, rotation=45, ha="right")
    ax.set_ylabel("torch.optim step time / gradstep step time")
    ax.set_title(_title("GPT-2-like float32", gpt))
    ax.legend(fontsize=8)

    ax = axes[1]
    ys = []
    for a in algos:
        ys.append(min(r["vs_gradstep"] for impl, r in small.get(a, {}).items() if impl in TORCH))
    ax.bar(range(len(algos)), ys, color="tab:green")
    ax.axhline(2.0, color="red", lw=0.8, ls="--", label="target 2x")
    ax.set_xticks(range(len(algos)), algos, rotation=45, ha="right")
    ax.set_ylabel("fastest torch.optim / gradstep")
    ax.set_title(_title("small tensors float32", small))
    ax.legend(fontsize=8)

    ax = axes[2]
    for k, (name, data) in enumerate((("float32", gpt), ("bfloat16", bf16))):
        ys = [data[a]["gradstep"]["frac_roofline"] * 100 if a in data else 0 for a in algos]
        ax.bar([i + (k - 0.5) * 0.38 for i in range(len(algos))], ys, 0.38, label=name)
    ax.axhline(90, color="red", lw=0.8, ls="--", label="target 90%")
    ax.set_ylim(0, 110)
    ax.set_xticks(range(len(algos)), algos, rotation=45, ha="right")
    ax.set_ylabel("% of roofline (ideal kernel, same bytes)")
    ax.set_title("GPT-2-like: gradstep vs its roofline")
    ax.legend(fontsize=8, loc="lower right")

    m = result["machine"]
    fig.suptitle(f"gradstep CPU backend vs torch.optim {m['torch']} — {m['cpu']}, {m['threads']} threads, "
                 f"measured {m['bandwidth_gbs']:.0f} GB/s ({result['config']['time']})", fontsize=10)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


def markdown(src: str | None = None) -> str:
    """One markdown table per parameter set (times in ms; torch columns: torch time / gradstep time)."""
    result = json.loads(Path(src or ROOT / "benchmarks/results/cpu.json").read_text())
    out = []
    for pset in dict.fromkeys(r["param_set"] for r in result["rows"]):
        data = _by(result["rows"], pset)
        overhead = pset.startswith("overhead")
        head = ["algorithm", "B/param", "gradstep ms", "roofline ms", "% of roofline", "GB/s"]
        head += ["vs for-loop", "vs foreach", "vs fused", "vs default"] + (["µs/tensor"] if overhead else [])
        out += [f"**{_title(pset, data)}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for a, impls in data.items():
            gs, roof = impls["gradstep"], impls.get("roofline")
            cells = [a, str(gs["bytes_per_param"]), f"{gs['median_s'] * 1e3:.2f}",
                     f"{roof['median_s'] * 1e3:.2f}" if roof else "-",
                     f"{gs['frac_roofline']:.0%}" if gs["frac_roofline"] else "-",
                     f"{gs['effective_gbs']:.1f}" if gs["effective_gbs"] else "-"]
            for impl in TORCH:
                r = impls.get(impl)
                cells.append(f"{r['vs_gradstep']:.2f}x" if r else "—")
            if overhead:
                cells.append(f"{gs['median_s'] / gs['n_tensors'] * 1e6:.2f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(*sys.argv[2:3]))
    else:
        main(*sys.argv[1:3])
