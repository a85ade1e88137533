"""Mean +- sd per layout, label budget and arm, the paired difference to ``random``, the table, and merging
runs over disjoint seeds into what one run would have written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

LAYOUT_NAMES = {"hsidrive": "HSI-Drive-like 25 bands", "hyko2": "HyKo-like 15 bands", "hcv2": "HCV2-like 128 bands"}


def sign_test_p(wins: int, n: int) -> float:
    """One-sided exact sign test: P(>= ``wins`` of ``n`` paired seeds won | no effect, ties counted as losses).

    The honest small-sample statement for "pretrained beats random": 5 of 5 gives 1/32 = 0.031, 3 of 3 only 0.125.
    """
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (layout, labels, epochs, arm): mean, sd and values of each score; for pretrained arms the paired
    per-seed OA difference to ``random`` with its sign test."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["layout"], r["labels"], r["epochs"], r["arm"]), []).append(r)
    out = []
    for (layout, labels, epochs, arm), rs in groups.items():
        entry: dict[str, Any] = {"layout": layout, "labels": labels, "epochs": epochs, "arm": arm, "n": len(rs)}
        for m in ("oa", "balanced_accuracy", "kappa"):
            v = np.array([r[m] for r in rs])
            entry[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                        "values": [round(float(x), 4) for x in v]}
        out.append(entry)
    # paired pretrained - random OA difference per seed
    for e in out:
        if not e["arm"].startswith("pretrained"):
            continue
        rnd = {r["seed"]: r["oa"] for r in rows if (r["layout"], r["labels"], r["epochs"], r["arm"]) ==
               (e["layout"], e["labels"], e["epochs"], "random")}
        pre = {r["seed"]: r["oa"] for r in rows if (r["layout"], r["labels"], r["epochs"], r["arm"]) ==
               (e["layout"], e["labels"], e["epochs"], e["arm"])}
        d = np.array([pre[s] - rnd[s] for s in sorted(pre) if s in rnd])
        if d.size:
            wins = int((d > 0).sum())
            e["oa_minus_random"] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                                    "wins": wins, "n": int(d.size), "sign_test_p": sign_test_p(wins, int(d.size))}
    return out


def table(summary: list[dict[str, Any]]) -> str:
    """The printed table of :func:`summarize`'s entries."""
    lines = [f"{'layout':<26}{'labels':>7}{'epochs':>7}  {'arm':<24}{'OA':>16}{'bal. acc.':>16}{'kappa':>16}"
             f"  {'OA - random (wins)':>20}"]
    for e in summary:
        cells = "".join(f"{e[m]['mean']:>10.3f} ± {e[m]['sd']:.3f}" for m in ("oa", "balanced_accuracy", "kappa"))
        diff = ""
        if "oa_minus_random" in e:
            d = e["oa_minus_random"]
            diff = f"  {d['mean']:+.3f} ± {d['sd']:.3f} ({d['wins']}/{d['n']}, sign p {d['sign_test_p']:.3f})"
        lines.append(f"{LAYOUT_NAMES.get(e['layout'], e['layout']):<26}{e['labels']:>7}{e['epochs']:>7}  "
                     f"{e['arm']:<24}{cells}{diff}")
    return "\n".join(lines)


def combine(paths: list[Path]) -> dict[str, Any]:
    """One result from runs of the same protocol over disjoint seeds (what a single run would have written)."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for p, part in zip(paths[1:], parts[1:], strict=True):
        a = {k: v for k, v in first["protocol"].items() if k not in ("seeds", "pretrain_seeds")}
        b = {k: v for k, v in part["protocol"].items() if k not in ("seeds", "pretrain_seeds")}
        if a != b:
            raise SystemExit(f"error: --combine: {p} has another protocol than {paths[0]}: "
                             f"{sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))} differ")
    def seeds_of(part: dict[str, Any]) -> list[int]:  # a count (0..N-1) in files written before --first-seed
        given = part["protocol"]["seeds"]
        return list(range(given)) if isinstance(given, int) else list(given)

    seeds = [s for part in parts for s in seeds_of(part)]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: --combine: seeds overlap ({sorted(seeds)})")
    rows = [r for part in parts for r in part["rows"]]
    pretraining = {k: v for part in parts for k, v in part["pretraining"].items()}
    return {**first, "command": " + ".join(part["command"] for part in parts),
            "protocol": {**first["protocol"], "seeds": sorted(seeds),
                         "pretrain_seeds": len({k.rsplit("/", 1)[-1] for k in pretraining if "/" in k})},
            "pretraining": pretraining,
            "wall_time_s": round(sum(part["wall_time_s"] for part in parts), 1),
            "combined_from": [str(p) for p in paths], "summary": summarize(rows), "rows": rows}
