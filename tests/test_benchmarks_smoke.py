"""Smoke test of ``benchmarks/``: every module imports and its measuring core runs at a trivial size.

No Ray is started here: the Ray parts of ``orchestration`` and ``early_stopping``
are exercised by ``python -m benchmarks``; their pure pieces (overhead maths,
extrapolation, ASHA-vs-FIFO comparison) are checked below.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is not part of the installed package (it is run as `python -m benchmarks` from the repo root)
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the benchmarks use on CPU (two collapse when another job holds a core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MODULES = ("orchestration", "throughput", "feature_export", "feature_cache", "early_stopping", "data_loading",
           "indian_pines_fc", "gpu", "cluster_fill", "features_mode", "loader",
           "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_has_main(name: str) -> None:
    mod = importlib.import_module(f"benchmarks.{name}")
    assert callable(mod.main)


def test_common_machine_info_and_atomic_write(tmp_path: Path) -> None:
    from benchmarks._common import machine_info, write_result

    info = machine_info()
    keys = {"cpu_count", "torch_threads", "load_average", "torch", "ray", "device", "git_commit", "command"}
    assert keys <= set(info)
    out = write_result("x", {"machine": info}, tmp_path)
    assert json.loads(out.read_text())["machine"]["device"] == info["device"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_orchestration_pure_pieces() -> None:
    from benchmarks.orchestration import extrapolate, overhead_pct

    assert overhead_pct(11.0, 10.0) == pytest.approx(10.0)
    # 2 s fixed per trial + 5 % proportional, measured at two trial lengths
    pts = [{"n_trials": 3, "direct_s": d, "overhead_s": 3 * 2.0 + 0.05 * d} for d in (3.0, 60.0)]
    ext = extrapolate(pts, trial_s=60.0)
    assert ext["fixed_s_per_trial"] == pytest.approx(2.0) and ext["proportional_pct"] == pytest.approx(5.0)
    assert ext["pct_at_trial_s"] == pytest.approx(100 * (2.0 / 60 + 0.05), abs=0.01)
    assert "fixed" in extrapolate(pts[:1])["method"]


def test_early_stopping_compare() -> None:
    from benchmarks.early_stopping import compare, config_key

    k = [config_key({"lr": v, "weight_decay": 0.0, "dropout": 0.1}) for v in (1e-3, 1e-2)]
    asha = [{"key": k[0], "epochs": 10, "best_val": 0.50, "status": "completed"},
            {"key": k[1], "epochs": 1, "best_val": 0.20, "status": "stopped_early"}]
    fifo = [{"key": k[0], "epochs": 10, "best_val": 0.50, "status": "completed"},
            {"key": k[1], "epochs": 10, "best_val": 0.505, "status": "completed"}]
    c = compare(asha, fifo)
    assert c["saved_pct"] == pytest.approx(45.0) and c["same_configs"]
    assert c["regret_points"] == pytest.approx(0.5) and not c["same_best_config"]


def test_throughput_measure_tiny() -> None:
    from benchmarks.throughput import measure

    rows = measure(True, "cpu", datasets=("hyko2",), cap_s=1e6, size_override=(32, 32),
                   models=("runet-small", "hypersl-fc-64"))
    assert [r["model"] for r in rows] == ["runet-small", "hypersl-fc-64"]
    for r in rows:
        assert {"model", "images_s", "pixels_s", "peak_rss_mb", "peak_cuda_mb"} <= set(r) and r["images_s"] > 0


def test_feature_export_measure_tiny() -> None:
    from benchmarks.feature_export import flops_per_pixel, measure, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("Some GPU") is None
    assert flops_per_pixel(15, 256, 8) == pytest.approx(8 * (24 * 16 * 256**2 + 4 * 16**2 * 256))
    rows = measure(("tiny",), ("hyko2",), (16, 32), "cpu", min_s=0.01, cap_s=5.0)
    measured = [r for r in rows if r.get("pixels_s")]
    assert {(r["dtype"], r["bn_mode"]) for r in rows} >= {("fp32", "chunk"), ("fp32", "running")}
    assert measured and all({"gflop_s", "peak_pct", "chunk"} <= set(r) for r in measured)


def test_feature_cache_measure_tiny(tmp_path: Path) -> None:
    from benchmarks.feature_cache import measure, target_ratio

    assert target_ratio(10) == pytest.approx(0.2)
    res = measure((16, 24, 2, 1, "tiny", 2, 1, 1), tmp_path, cache_dir=tmp_path / "cache", use_trainable=False)
    assert {"export_s", "head_s_per_trial", "uncached_s", "cached_s", "ratio", "target_ratio"} <= set(res)
    assert 0 < res["ratio"] <= 1.0


def test_features_mode_measures_and_models_tiny(tmp_path: Path) -> None:
    from benchmarks.features_mode import CHUNKS, forward_rate, model_rows, read_rate

    rate = forward_rate("cpu", 15, 32)
    assert rate["px_per_s"] > 0 and 4e6 < rate["flops_per_px"] < 7e6  # HyperSL-cpu on 15 bands: ~5.3 MFLOP
    assert read_rate(tmp_path, 1, dim=8) > 0
    rows = model_rows({k: {**rate, "flop_rate": 1e10} for k in CHUNKS}, 1e8)
    assert len(rows) == 3 * 2 * 3 and {r["auto"] for r in rows if r["device"].startswith("this CPU")} == {"cache"}


def test_data_loading_measure_tiny(tmp_path: Path) -> None:
    from benchmarks.data_loading import measure

    (row,) = measure(("hyko2",), True, tmp_path, size_override=(16, 24))
    assert {"read_images_s", "load_images_s", "assemble_images_s", "model_images_s", "ratio"} <= set(row)
    assert row["read_images_s"] > 0 and row["assemble_images_s"] > 0


def test_throughput_freeze_depth_rows_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.throughput as tp

    # the calibrated step stays at the 64-pixel probe size (the constant lives with the timed steps)
    monkeypatch.setattr("benchmarks.throughput_steps.K1_TARGET_S", 0.01)
    rows = tp.measure(True, "cpu", datasets=("hyko2",), cap_s=1e6, size_override=(28, 42),
                      models=("vit-s-k0", "vit-s-k4", "hypersl-fc-64", "hypersl-fc-64-k1", "hypersl-runet-64-k1"))
    by = {r["model"]: r for r in rows}
    assert list(by) == ["hypersl-fc-64", "vit-s-k0", "vit-s-k4", "hypersl-fc-64-k1", "hypersl-runet-64-k1"]
    assert all(r["pixels_s"] > 0 and r["peak_rss_mb"] for r in rows)
    assert by["vit-s-k4"]["slowdown_vs_k0"] > 0 and by["hypersl-fc-64-k1"]["slowdown_vs_k0"] > 1
    assert by["hypersl-fc-64-k1"]["image"].startswith("64 px") and "shrunk" in by["hypersl-fc-64-k1"]["note"]


def test_indian_pines_batched_heads_equal_separate_heads() -> None:
    """Stacking the arms' HyperSL-FC heads must not couple them: each head trains exactly as it would alone."""
    import numpy as np
    import torch

    from benchmarks.indian_pines_fc import BatchedFC

    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(40, 6)).astype(np.float32) * s for s in (1.0, 3.0)]
    y = torch.from_numpy(rng.integers(0, 3, size=40)).long()
    batched = BatchedFC(2, 6, 3, seed=0)
    opt = torch.optim.AdamW(batched.parameters(), lr=1e-2, weight_decay=1e-4, eps=1e-8)
    singles, opts = [], []
    for _ in xs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000)
            head = torch.nn.Sequential(torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3))
        singles.append(head)
        opts.append(torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4, eps=1e-8))
    xt = torch.from_numpy(np.stack(xs))
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(batched(xt).reshape(-1, 3), y.repeat(2), reduction="none").view(
            2, -1).mean(1).sum().backward()
        opt.step()
        for head, o, x in zip(singles, opts, xt, strict=True):
            o.zero_grad()
            torch.nn.functional.cross_entropy(head(x), y).backward()
            o.step()
    batched.eval()
    for h, (head, x) in enumerate(zip(singles, xt, strict=True)):
        head.eval()
        torch.testing.assert_close(batched(xt)[h], head(x), rtol=1e-4, atol=1e-5)


def test_indian_pines_early_stopping_restores_best_val_weights() -> None:
    """The restored head scores the validation pixels exactly as well as the best validation it reported."""
    import numpy as np
    import torch

    from benchmarks.indian_pines_fc import mean_iou, train_heads_es

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 5)) * 2
    y, yv = rng.integers(0, 3, size=60), rng.integers(0, 3, size=30)
    x = (centres[y] + rng.normal(size=(60, 5))).astype(np.float32)
    xv = (centres[yv] + rng.normal(size=(30, 5)) * 1.5).astype(np.float32)
    heads, best = train_heads_es([x, x[:, ::-1].copy()], y, [xv, xv[:, ::-1].copy()], yv, 3, seed=0,
                                 eval_every=5, patience=4, max_steps=400, lr=3e-2)
    with torch.inference_mode():
        pred = heads(torch.from_numpy(np.stack([xv, xv[:, ::-1].copy()]))).argmax(2).numpy()
    for h in range(2):
        assert 0 < best[h]["step"] <= 400 and best[h]["step"] % 5 == 0
        assert mean_iou(yv, pred[h], 3) == best[h]["val_miou"] > 1 / 3


def test_indian_pines_given_backbone_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--backbone`` runs the whole check on a checkpoint in the released layout (exactly what HyperSL's
    train.py writes: ``module.`` keys, no config), against a random init of that architecture."""
    import torch

    from benchmarks import indian_pines_fc as ip
    from study.models.hypersl import build_hypersl

    torch.manual_seed(5)
    model = build_hypersl("tiny")
    ckpt = tmp_path / "5_base_mask95_checkpoint.pt"
    torch.save({"epoch": 5, "model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {}, "scheduler": {}}, ckpt)
    out = tmp_path / "ip.json"
    assert ip.main(["--backbone", str(ckpt), "--seeds", "1", "--layouts", "hyko2", "--labels", "10",
                    "--eval-every", "20", "--patience", "1", "--max-steps", "60", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    arms = {r["arm"] for r in result["rows"]}
    assert arms == {ip.GIVEN_ARM, "random", "spectra"}
    assert result["pretraining"]["given"]["architecture"]["dim"] == 32
    assert result["protocol"]["head"]["protocol"] == "es"
    for r in result["rows"]:
        assert r["epochs"] == "es" and 0 < r["stopped_step"] <= 60 and 0.0 <= r["oa"] <= 1.0
        assert 0 < r["train_pixels"] <= 10 * len(result["protocol"]["classes_kept"])  # fit quarters: some < 10
    given = next(e for e in result["summary"] if e["arm"] == ip.GIVEN_ARM)
    assert given["oa_minus_random"]["n"] == 1
    assert "pretrained_checkpoint" in capsys.readouterr().out
    # a second process's seed, combined: what one run over both seeds writes
    second = tmp_path / "ip1.json"
    assert ip.main(["--backbone", str(ckpt), "--first-seed", "1", "--seeds", "1", "--layouts", "hyko2", "--labels",
                    "10", "--eval-every", "20", "--patience", "1", "--max-steps", "60", "--out", str(second)]) == 0
    both = tmp_path / "both.json"
    assert ip.main(["--combine", str(out), str(second), "--out", str(both)]) == 0
    merged = json.loads(both.read_text())
    assert merged["protocol"]["seeds"] == [0, 1] and len(merged["rows"]) == 6
    assert all(e["n"] == 2 for e in merged["summary"])
    with pytest.raises(SystemExit, match="seeds overlap"):
        ip.main(["--combine", str(out), str(out), "--out", str(both)])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="--backbone"):
        ip.main(["--backbone", str(tmp_path / "junk.pt"), "--seeds", "1", "--out", str(out)])


def test_indian_pines_sign_test() -> None:
    from benchmarks.indian_pines_fc import sign_test_p

    assert sign_test_p(5, 5) == 1 / 32 and sign_test_p(3, 3) == 1 / 8 and sign_test_p(0, 4) == 1.0
    assert sign_test_p(4, 5) == 6 / 32


def test_gpu_without_cuda_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.gpu as gpu

    monkeypatch.setattr(gpu, "cuda_available", lambda: False)
    assert gpu.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA" in out
    rows = [{"strategy": "indomain", "dataset": "hcv2", "precision": "bf16", "images_s": 3.5},
            {"strategy": "indomain", "dataset": "hcv2", "precision": "fp32", "images_s": 1.0}]
    assert gpu._demand(rows) == 3.5 and gpu._demand([]) is None


def test_feature_export_precision_pieces() -> None:
    import numpy as np

    from benchmarks.feature_export import fc_val_miou, precision_errors

    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8)).astype(np.float32)
    e = precision_errors(a, a)
    assert e["max_abs_err"] == 0 and e["cos_min"] == pytest.approx(1.0)
    e = precision_errors(a, a * 1.01)
    assert e["max_rel_err"] == pytest.approx(0.01, rel=1e-3) and e["cos_min"] == pytest.approx(1.0)
    y = rng.integers(1, 3, size=(2, 5, 5))
    x = np.eye(4, dtype=np.float32)[y] * 3 + rng.normal(size=(2, 5, 5, 4)).astype(np.float32) * 0.1
    assert fc_val_miou((x, y), (x, y), 4, 0, steps=100) > 0.9


def test_cluster_fill_bound_and_the_driver_s_order(tmp_path: Path) -> None:
    """The makespan bound from run rows, and the simulated cells ranked as long as they sleep: each dataset's
    images have their own size and the strategies their relative cost, which the driver's estimate reads."""
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from benchmarks import cluster_fill as cf
    from study.config import build_config
    from study.orchestration import check_inputs, expected_cost, pending_cells
    from study.strategies import STRATEGIES

    t = datetime(2026, 1, 1, tzinfo=UTC)
    rows = pl.DataFrame({"cell_id": ["a", "a", "a", "b"], "phase": ["tune", "tune", "final", "tune"],
                         "started_at": [t, t, t + timedelta(seconds=10), t],
                         "ended_at": [t + timedelta(seconds=10), t + timedelta(seconds=4),
                                      t + timedelta(seconds=18), t + timedelta(seconds=6)]})
    fig = cf.measure(rows, makespan=20.0, slots=2)
    assert fig["run_s"] == 28.0 and fig["longest_cell_s"] == 18.0  # a: 10 s tuning + 8 s final
    assert fig["lower_bound_s"] == 18.0 and fig["ratio_to_bound"] == round(20 / 18, 3)
    assert fig["busy_fraction"] == round(28 / 40, 3)
    assert cf.longest_cell_timeline(rows, t) == {"longest_tune_start_s": 0.0, "longest_tune_end_s": 10.0,
                                                 "longest_final_start_s": 10.0, "longest_final_end_s": 18.0}

    names = cf.register_sim_strategies()
    try:
        cache = tmp_path / "cache"
        root = cf.data_root(cache)
        cfg = build_config("full", strategies=names, dataset=cf.DATASETS, fractions=(0.5, 1.0), trials=1,
                           epochs=2, grace_period=1, seeds=1, results=tmp_path / "res", cache_dir=cache,
                           data_root=root)
        cells = pending_cells(cfg, check_inputs(cfg, echo=lambda _: None), set(), echo=lambda _: None)
        slept = [cf._epoch_s(s.name, p.spec.name, len(sub.names)) for p, s, sub, _ in cells]
        assert slept == sorted(slept, reverse=True)  # longest first, as the trials will sleep
        assert [expected_cost(c) for c in cells] == sorted((expected_cost(c) for c in cells), reverse=True)
        assert (cells[0][0].spec.name, cells[0][1].name) == ("hcv2", "sim-hypersl-runet")
    finally:
        for n in names:
            STRATEGIES.pop(n, None)


def test_loader_rows_per_dataset_and_placement(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """After the first epoch the resident placements read no file, and device copies nothing to the device."""
    from benchmarks.loader import main

    assert main(["--json", "--scale", "0.05", "--images", "3", "--batch", "2", "--epochs", "2", "--workers", "1",
                 "--work", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["dataset"], r["placement"]) for r in rows] == [
        (d, p) for d in ("hyko2", "hsidrive", "hcv2") for p in ("stream", "memory", "device")]
    keys = {"dataset", "placement", "supply_img_s", "demand_img_s_h100", "ratio", "disk_bytes_per_epoch",
            "h2d_bytes_per_epoch"}
    for r in rows:
        assert keys <= set(r) and r["supply_img_s"] > 0 and r["ratio"] == pytest.approx(
            r["supply_img_s"] / r["demand_img_s_h100"], rel=0.01, abs=1e-3)
        h, w, c = (int(v) for v in r["image"].split("x"))
        stored = 3 * h * w * (c * 4 if r["dataset"] != "hcv2" else 6 * 2)  # float32 cubes; 6 float16 pca scores
        if r["placement"] == "stream":  # the worker reads every image again
            assert r["disk_bytes_per_epoch"] >= stored
        else:
            assert r["disk_bytes_per_epoch"] == 0
        assert (r["h2d_bytes_per_epoch"] == 0) == (r["placement"] == "device")
