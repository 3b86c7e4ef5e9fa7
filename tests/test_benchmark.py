"""``radar benchmark``: a quick end-to-end run on tiny generated data (in
process, through ``cli.main``), the cached model, the validation split, the
method rows the registries give, and bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import pkgutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import radar_ad.bench
from radar_ad import RadarConfig
from radar_ad.apps.cli import main
from radar_ad.bench.baselines import baseline_names
from radar_ad.bench.datasets import DatasetSource, dataset_sources
from radar_ad.bench.methods import method_names, radar_rows, reference_method, selected_methods
from radar_ad.bench.splits import fixed_subset, validation_split
from radar_ad.data import LabeledImage
from radar_ad.decision import OneClassModel
from radar_ad.errors import ConfigError
from radar_ad.registry import BACKENDS, ONE_CLASS_MODELS, RESPONSES
from radar_ad.response import Response
from radar_ad.synthetic import SyntheticSpec, make_dataset

from conftest import write_gray

METHOD_KEYS = tuple(method_names())  # those of the default config, which the tiny dataset is run with
# every RADAR row (one network evaluation per position) and the two cheap baselines
FAST = {row.key for row in radar_rows()} | {"onestep", "statistical"}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    # 32 px: four 16 px patches per image keeps the 251-step DDPM chain cheap
    spec = SyntheticSpec(size=32, n_train=20, n_test_good=3, n_test_per_defect=2,
                         defect_types=("blob", "gap"), severity=(0.8, 1.0), seed=0)
    return make_dataset(tmp_path_factory.mktemp("bench") / "tiny", spec)


def benchmark(capsys, *args: object) -> tuple[int, str, str]:
    code = main(["benchmark", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_quick_benchmark_reports_every_method_and_reuses_the_model(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    args = (tiny_dataset, "--out", out, "--quick", "-q", "--steps", 10, "--subset", 2,
            "--calibration-limit", 5, "--resize", 32)
    threads = torch.get_num_threads()
    code, stdout, stderr = benchmark(capsys, *args)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    # --quick runs torch on one thread and gives the caller's setting back
    assert results["environment"]["torch_threads"] == 1 and torch.get_num_threads() == threads
    (dataset,) = results["datasets"]  # only the dataset given: not the demo, nor any dataset found by default
    assert set(dataset["methods"]) == set(METHOD_KEYS) and not dataset["model_reused"]
    subset_rows = {row["method"]: row for row in dataset["tables"]["subset"]}
    test_rows = {row["method"]: row for row in dataset["tables"]["test"]}
    assert set(subset_rows) == set(METHOD_KEYS) and set(test_rows) == FAST
    # the registries' rows: another one-class model and another response, each in both tables
    assert {"radar_if", "radar_lof", "radar_knn", "radar_energy", "radar_sobel"} <= FAST
    assert dataset["reference_method"] == "radar_if" and list(subset_rows)[0] == "radar_if"
    for row in [*subset_rows.values(), *test_rows.values()]:
        assert math.isfinite(row["image_auroc"]) and row["pixel_auroc"] is not None
        assert row["median_seconds_per_image"] > 0 and row["peak_rss_mib"] > 0
    assert subset_rows["radar_if"]["relative_time"] == 1.0  # the reference of the ratios
    assert subset_rows["ddpm250"]["relative_time"] > 10  # 251 evaluations per patch against 1
    assert subset_rows["ddpm250"]["network_evaluations_per_image"] == 251 * 4  # 4 patches of 16 px
    assert subset_rows["statistical"]["network_evaluations_per_image"] == 0
    assert subset_rows["ddpm250"]["n_calibration"] == 5 < subset_rows["radar_if"]["n_calibration"]

    # the validation images are listed and never scored; the subset is 2 + 2
    splits = dataset["splits"]
    assert len(splits["validation_files"]) == 2  # one per defect type
    scored = {record["file"] for records in dataset["images"].values() for record in records}
    assert scored.isdisjoint(splits["validation_files"])
    assert (subset_rows["ddpm250"]["n_normal"], subset_rows["ddpm250"]["n_defective"]) == (2, 2)

    markdown = (out / "results.md").read_text()
    assert "| method |" in markdown and "Table 1" in markdown and "Table 2" in markdown
    assert "radar benchmark" in markdown and "total wall time" in markdown
    assert markdown.count("| DDPM reconstruction from t=250") == 1  # slow: the subset table only
    assert markdown.count("| RADAR (IsolationForest)") == 2
    assert markdown.count("| RADAR (KNearestNeighbour)") == 2
    assert markdown.count("| RADAR (energy response)") == 2
    assert "time / RADAR IF" in markdown
    assert "| method |" in stdout
    assert "| RADAR (KNearestNeighbour)" in stdout and "| RADAR (energy response)" in stdout
    page = (out / "report.html").read_text()
    # ROC + histograms, then per example (1 normal + the subset's 2 defective):
    # the image, its mask and one map per method
    assert page.count("data:image/png;base64,") == 2 + 3 * (2 + len(METHOD_KEYS))
    assert "http://" not in page and "https://" not in page

    code, _, stderr = benchmark(capsys, *args, "--methods", "radar_if")
    assert code == 0, stderr
    assert "reusing" in stderr
    again = json.loads((out / "results.json").read_text())["datasets"][0]
    assert again["model_reused"] and again["model_dir"] == dataset["model_dir"]
    assert again["tables"]["subset"][0]["image_auroc"] == subset_rows["radar_if"]["image_auroc"]

    # another inference setting reuses the network and only recalibrates
    code, _, stderr = benchmark(capsys, *args, "--methods", "radar_if", "--set", "inference.map_sigmas=[2]")
    assert code == 0, stderr
    assert "reusing" in stderr and "recalibrating" in stderr
    third = json.loads((out / "results.json").read_text())["datasets"][0]
    assert third["model_dir"] == dataset["model_dir"] and third["config"]["inference"]["map_sigmas"] == [2]
    assert third["tables"]["subset"][0]["pixel_auroc"] != subset_rows["radar_if"]["pixel_auroc"]


def test_method_rows_come_from_the_registries():
    names = method_names()
    config = RadarConfig()
    for model_name, model in ONE_CLASS_MODELS.items():
        key = f"radar_{model.abbreviation or model_name}"
        assert names[key] == f"RADAR ({model.__name__.removesuffix('Model')})", model_name
    for response in RESPONSES.names():
        if response != config.inference.response:
            assert names[f"radar_{response}"] == f"RADAR ({response} response)"
    # the config's own response ("auto": the self-validated choice) is the
    # one-class rows' response: no row of its own; every registered response
    # has a row that forces it
    assert f"radar_{config.inference.response}" not in names
    assert config.inference.response not in RESPONSES.names()
    n_rows = len(ONE_CLASS_MODELS.names()) + len(RESPONSES.names())
    baselines = tuple(baseline_names())
    assert list(names) == [row.key for row in radar_rows()] + list(baselines)
    assert len(names) == n_rows + len(baselines)
    assert baselines == ("ddpm250", "ddpm25", "ddim10", "onestep", "statistical")
    # keys the tests and the README use
    assert names["radar_if"] == "RADAR (IsolationForest)" and names["radar_lof"] == "RADAR (LocalOutlierFactor)"
    assert list(names)[0] == reference_method() == "radar_if"


def test_a_new_plug_in_gets_a_row_with_no_harness_change(monkeypatch):
    # discover the installed plug-ins first, so the stand-ins are added to them
    ONE_CLASS_MODELS.names()
    RESPONSES.names()

    class ConvexHullModel(OneClassModel):
        """A stand-in one-class model."""

        abbreviation = "hull"

    class GlowResponse(Response):
        """A stand-in response."""

    monkeypatch.setitem(ONE_CLASS_MODELS._entries, "convex_hull", ConvexHullModel)
    monkeypatch.setitem(RESPONSES._entries, "glow", GlowResponse)
    names = method_names()
    assert names["radar_hull"] == "RADAR (ConvexHull)" and names["radar_glow"] == "RADAR (glow response)"


def test_importing_the_benchmark_looks_up_no_registry(monkeypatch):
    # each module of radar_ad.bench run afresh while a registry look-up fails
    # the test: the method table asks the registries when it is called
    def refuse() -> None:
        pytest.fail("a registry was looked up while a benchmark module was imported")

    for registry in (ONE_CLASS_MODELS, RESPONSES, BACKENDS):
        monkeypatch.setattr(registry, "_discovered", False)
        monkeypatch.setattr(registry, "_discover", refuse)
    for info in pkgutil.iter_modules(radar_ad.bench.__path__, prefix="radar_ad.bench."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.loader is not None
        fresh = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, info.name, fresh)  # the original is back after the test
        spec.loader.exec_module(fresh)


def test_the_old_harness_path_forwards_with_a_warning():
    from radar_ad.bench import harness, runner

    with pytest.warns(DeprecationWarning, match="radar_ad.bench.runner"):
        assert harness.run_benchmark is runner.run_benchmark
    with pytest.warns(DeprecationWarning, match="reference_method"):
        assert harness.REFERENCE_METHOD == "radar_if"
    with pytest.raises(AttributeError):
        harness.no_such_name  # noqa: B018


def test_rows_follow_the_configs_own_model_and_response():
    config = RadarConfig().updated({"inference.response": "sobel", "decision.one_class_model": "local_outlier_factor"})
    rows = radar_rows(config)
    assert rows[0].key == "radar_lof" and rows[0].settings == {}  # the config itself: the reference
    keys = {row.key: row.settings for row in rows}
    assert keys["radar_if"] == {"decision.one_class_model": "isolation_forest"}
    assert keys["radar_two_sided"] == {"inference.response": "two_sided"} and "radar_sobel" not in keys
    assert selected_methods(config, ["statistical", "radar_if"]) == ("radar_if", "statistical")  # table order
    with pytest.raises(ConfigError, match="radar_sobel") as caught:
        selected_methods(config, ["radar_sobel"])
    assert caught.value.setting == "methods"


def test_no_dataset_arguments_means_the_demo_data_only(tmp_path):
    assert dataset_sources(None, tmp_path) == [DatasetSource("demo", tmp_path / "data" / "demo", builtin=True)]
    assert dataset_sources([], tmp_path, quick=True)[0].name == "demo-quick"


def test_datasets_of_the_same_name_are_told_apart(tiny_dataset, tmp_path):
    names = [source.name for source in dataset_sources([str(tiny_dataset)] * 3, tmp_path)]
    assert names == ["tiny", "tiny-2", "tiny-3"]


def _items() -> list[LabeledImage]:
    items = [LabeledImage(Path(f"test/good/{i:03d}.png"), "good") for i in range(10)]
    for label, n in (("crack", 10), ("blob", 3), ("stain", 1)):
        items += [LabeledImage(Path(f"test/{label}/{i:03d}.png"), label) for i in range(n)]
    return items


def test_validation_split_is_seeded_disjoint_and_per_defect_type():
    items = _items()
    validation, test = validation_split(items, 0.2, seed=0)
    assert (validation, test) == validation_split(items, 0.2, seed=0)
    assert set(validation).isdisjoint(test) and len(validation) + len(test) == len(items)
    assert test == [item for item in items if item not in validation]  # order kept
    # 20 % of each defect type, at least one; a single image stays in the test split
    assert Counter(item.label for item in validation) == {"crack": 2, "blob": 1}
    assert validation_split(items, 0.2, seed=1)[0] != validation
    assert validation_split(items, 0.0, seed=0) == ([], items)
    with pytest.raises(ConfigError):
        validation_split(items, 1.0, seed=0)


def test_subset_is_seeded_and_balanced():
    items = _items()
    subset = fixed_subset(items, 4, seed=0)
    assert subset == fixed_subset(items, 4, seed=0)
    assert Counter(item.is_defective for item in subset) == {False: 4, True: 4}
    assert len(fixed_subset(items, 100, seed=0)) == len(items)


@pytest.mark.parametrize("extra,fragment", [
    (["--set", "train.stepz=3"], "unknown setting"),
    (["--methods", "radar_if,magic"], "unknown method"),
    (["--validation-fraction", "1.5"], "--validation-fraction"),
    (["--backend", "tpu"], "--backend"),
])
def test_bad_options_fail_before_training(tiny_dataset, tmp_path, capsys, extra, fragment):
    out = tmp_path / "out"
    code, _, stderr = benchmark(capsys, tiny_dataset, "--out", out, "--quick", *extra)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radar: error:") and fragment in lines[0], stderr
    assert not out.exists()


def test_missing_or_unlabelled_dataset(tmp_path, capsys):
    code, _, stderr = benchmark(capsys, tmp_path / "nope", "--out", tmp_path / "out")
    assert code == 2 and stderr.strip().splitlines() == [f"radar: error: dataset not found: {tmp_path / 'nope'}"]
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    code, _, stderr = benchmark(capsys, folder, "--out", tmp_path / "out")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "no test/ folder" in stderr
    normal_only = tmp_path / "normal_only"
    for part in ("train/good", "test/good"):
        (normal_only / part).mkdir(parents=True)
        write_gray(normal_only / part / "000.png")
    code, _, stderr = benchmark(capsys, normal_only, "--out", tmp_path / "out")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "both normal" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module,package", [("matplotlib", "matplotlib"), ("skimage", "scikit-image")])
def test_missing_extra_is_named_before_training(tiny_dataset, tmp_path, capsys, monkeypatch, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    code, _, stderr = benchmark(capsys, tiny_dataset, "--out", tmp_path / "out", "--quick")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert package in stderr and "pip install 'radar-ad[bench]'" in stderr
    assert not (tmp_path / "out").exists()
