"""The comparison methods on a tiny untrained network (patch 16): shapes,
determinism, the stated chain lengths, the chain's direction, the one-class
protocol (RADAR's decision and output type, its non-finite policy), and the
texture map finding a pasted defect."""

import numpy as np
import pytest
import torch

from radar_ad import Radar, RadarConfig
from radar_ad.bench.baselines import (
    Baseline,
    DDIMReconstruction,
    DDPMReconstruction,
    MethodOutput,
    OneClassMethod,
    OneStepReconstruction,
    StatisticalBaseline,
    baseline_names,
    reconstruction_baselines,
)
from radar_ad.errors import DataError, NonFiniteError, NotFittedError
from radar_ad.outputs import Prediction
from radar_ad.synthetic import make_surface

# One training step (still in warm-up): the network is as good as untrained,
# which is all these tests need, and the model is a real fitted Radar.
TINY = {"network.block_out_channels": [8, 16], "network.attention": [False, True],
        "decision.one_class_models.isolation_forest.n_estimators": 50, "train.steps": 1, "train.batch_size": 8}


def shell(channels: int) -> Radar:
    """A fitted Radar with an (all but) untrained, seeded U-Net: fitted on
    six random 24 px images (one to train on, five to calibrate on)."""
    config = RadarConfig(patch_size=16).updated({**TINY, "data.grayscale": channels == 1})
    rng = np.random.default_rng(channels)
    shape = (24, 24) if channels == 1 else (24, 24, channels)
    radar = Radar(config, device="cpu").fit([rng.random(shape) for _ in range(6)], progress=False)
    assert radar.channels_ == channels
    return radar


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of tiny U-Net calls: one thread beats threads fighting over
    shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gray_radar() -> Radar:
    return shell(1)


def images(channels: int, shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((channels, h, w), dtype=np.float32) for h, w in shapes]


def surfaces(count: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Textured normal images (diagonal roads) as (1, H, W) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return [make_surface(rng, size)[None].astype(np.float32) / 255 for _ in range(count)]


def test_reconstruction_methods_in_order_with_their_chain_lengths(gray_radar):
    methods = reconstruction_baselines(gray_radar)
    assert [m.key for m in methods] == ["ddpm250", "ddpm25", "ddim10", "onestep"]
    assert [m.network_evaluations for m in methods] == [251, 26, 10, 1]
    assert [m.slow for m in methods] == [True, False, False, False]
    assert all(m.name for m in methods)
    stat = StatisticalBaseline(gray_radar.config)
    assert (stat.key, stat.network_evaluations, stat.slow) == ("statistical", 0, False)
    # the names a harness lists without building anything are the built methods' own
    assert baseline_names() == {m.key: m.name for m in [*methods, stat]}


def test_reconstruction_baselines_need_a_fitted_network():
    with pytest.raises(NotFittedError, match="not fitted"):
        reconstruction_baselines(Radar(RadarConfig(patch_size=16)))


@pytest.mark.parametrize("channels", [1, 3])
def test_every_method_gives_image_sized_maps_and_fixed_length_features(channels, gray_radar):
    radar = gray_radar if channels == 1 else shell(3)
    # two sizes in one call, the odd one in the middle: outputs keep input order
    shapes = [(24, 24), (16, 40), (24, 24)]
    batch = images(channels, shapes)
    methods = reconstruction_baselines(radar)
    if channels == 3:  # the long chain is the same code; once (gray) is enough
        methods = methods[1:]
    methods.append(StatisticalBaseline(radar.config))
    methods[-1].fit_reference(batch)
    for method in methods:
        outputs = method.analyse(batch)
        assert len(outputs) == 3 and all(isinstance(o, MethodOutput) for o in outputs)
        assert [o.anomaly_map.shape for o in outputs] == shapes, method.key
        assert all(o.anomaly_map.dtype == np.float32 for o in outputs)
        lengths = {o.features.shape for o in outputs}
        assert len(lengths) == 1 and lengths.pop()[0] >= 2, method.key
        for o in outputs:
            assert np.isfinite(o.features).all() and o.features.dtype == np.float64, method.key
            assert np.isfinite(o.anomaly_map).all() and (o.anomaly_map >= 0).all(), method.key
        # different images give different evidence
        assert not np.array_equal(outputs[0].features, outputs[2].features), method.key


def test_runs_are_deterministic_and_independent_of_batch_companions(gray_radar):
    first, second = images(1, [(24, 24), (24, 24)], seed=1)
    for method in (DDPMReconstruction(gray_radar, 25), DDIMReconstruction(gray_radar),
                   OneStepReconstruction(gray_radar)):
        alone = method.analyse([first])[0]
        again = method.analyse([first])[0]
        np.testing.assert_array_equal(alone.anomaly_map, again.anomaly_map)
        np.testing.assert_array_equal(alone.features, again.features)
        together = method.analyse([second, first])[1]
        np.testing.assert_allclose(together.anomaly_map, alone.anomaly_map, rtol=1e-4, atol=1e-5)
    # a different seed gives a different stochastic chain (on the same network)
    reseeded = gray_radar.with_settings({"seed": 1})
    assert reseeded.unet is gray_radar.unet
    other = DDPMReconstruction(reseeded, 25).analyse([first])[0]
    assert not np.allclose(other.anomaly_map, alone.anomaly_map)


class CountingUNet(torch.nn.Module):
    """Wraps the U-Net, recording the timestep and batch size of each call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.calls: list[tuple[int, int]] = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor):
        self.calls.append((int(timestep), sample.shape[0]))
        return self.unet(sample, timestep, class_labels=class_labels)


def test_chains_evaluate_the_network_as_often_as_stated(gray_radar):
    radar = gray_radar.with_settings({"inference.batch_size": 4})
    counter = CountingUNet(gray_radar.unet)
    # 16 x 40 at patch 16, stride 16: 3 patch positions; two images: 6 patches,
    # so a batch size of 4 splits every evaluation into two calls
    batch = images(1, [(16, 40), (16, 40)])
    expected_timesteps = {
        "ddpm250": list(range(250, -1, -1)),
        "ddim10": list(range(250, 0, -25)),
        "onestep": [250],
    }
    for method in (DDPMReconstruction(radar, 250), DDIMReconstruction(radar),
                   OneStepReconstruction(radar)):
        method.unet = counter  # the network the method evaluates
        counter.calls.clear()
        method.analyse(batch)
        patches = sum(size for _, size in counter.calls)
        assert patches == 6 * method.network_evaluations, method.key
        assert max(size for _, size in counter.calls) == 4
        timesteps = list(dict.fromkeys(t for t, _ in counter.calls))
        assert timesteps == expected_timesteps[method.key]
        assert len(timesteps) == method.network_evaluations


def test_reconstruction_from_an_early_timestep_stays_close_to_the_input(gray_radar):
    image = torch.from_numpy(np.stack(surfaces(1, size=32)))
    errors = {start: (DDPMReconstruction(gray_radar, start).reconstruct(image) - image).abs().mean()
              for start in (0, 250)}
    assert errors[0] < 0.02, errors
    assert errors[250] > 3 * errors[0], errors
    ddim = (DDIMReconstruction(gray_radar).reconstruct(image) - image).abs().mean()
    assert ddim > 3 * errors[0]
    restored = DDPMReconstruction(gray_radar, 250).reconstruct(image)
    assert restored.min() >= 0 and restored.max() <= 1


def test_one_class_method_fits_on_normal_images_and_predicts(gray_radar):
    config = gray_radar.config
    method = OneClassMethod(OneStepReconstruction(gray_radar), config)
    normal = images(1, [(24, 24)] * 6, seed=2)
    with pytest.raises(NotFittedError):
        method.predict(normal[:1])
    assert method.fit(normal) is method
    predictions = method.predict(normal[:2] + images(1, [(16, 32)], seed=3))
    assert len(predictions) == 3 and all(isinstance(p, Prediction) for p in predictions)
    for p in predictions:
        assert p.is_anomalous == (p.score > method.decision_.threshold_) and p.threshold == method.decision_.threshold_
        np.testing.assert_array_equal(p.mask, p.anomaly_map > method.pixel_threshold_)
        assert p.noise_map.shape == (0, *p.anomaly_map.shape) and p.image.shape == (1, *p.anomaly_map.shape)
    assert predictions[2].mask.shape == (16, 32)
    assert method.predict([]) == []
    for too_few in (normal[:3], []):
        with pytest.raises(DataError, match="at least"):
            OneClassMethod(OneStepReconstruction(gray_radar), config).fit(too_few)


class MeanBaseline(Baseline):
    """A stand-in method: the image is its own map, its mean and spread the features."""

    key = "mean"

    def analyse(self, images: list[np.ndarray]) -> list[MethodOutput]:
        return [MethodOutput(image.mean(axis=0), np.array([image.mean(), image.std()])) for image in images]


@pytest.mark.parametrize("policy", ["error", "anomalous"])
def test_a_non_finite_score_never_becomes_a_verdict(policy):
    config = RadarConfig().updated({"decision.non_finite": policy})
    normal = images(1, [(16, 16)] * 10, seed=5)
    method = OneClassMethod(MeanBaseline(), config).fit(normal[:6], normal[6:])
    broken = normal[0].copy()
    broken[0, 0, 0] = np.nan
    if policy == "error":
        with pytest.raises(NonFiniteError, match=r"image 2 of 2"):
            method.predict([normal[1], broken])
        return
    kept, flagged = method.predict([normal[1], broken])
    assert flagged.is_anomalous and flagged.p_value is None and not np.isfinite(flagged.score)
    assert kept.p_value is not None


def test_the_old_prediction_name_is_a_deprecated_alias():
    from radar_ad.bench import baselines

    with pytest.warns(DeprecationWarning, match=r"MethodPrediction is deprecated: .* radar_ad\.outputs\.Prediction"):
        assert baselines.MethodPrediction is Prediction


def with_flat_patch(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The image with a square of its mean grey pasted in: texture removed."""
    defective = image.copy()
    defective[:, top:top + size, left:left + size] = image.mean()
    return defective


def test_statistical_map_lights_up_a_flat_patch_and_the_image_scores_higher():
    config = RadarConfig(patch_size=16).updated({"decision.false_alarm_rate": None})  # 8 images, no conformal ones
    normal = surfaces(10, seed=4)
    method = OneClassMethod(StatisticalBaseline(config), config).fit(normal[:8])
    defective = with_flat_patch(normal[8], 20, 24, 16)
    clean_p, defect_p = method.predict([normal[9], defective])
    inside = np.zeros((64, 64), dtype=bool)
    inside[20:36, 24:40] = True
    heat = defect_p.anomaly_map
    assert heat[inside].mean() > 3 * heat[~inside].mean(), (heat[inside].mean(), heat[~inside].mean())
    # the hottest pixel is on the defect, and the mask sits there
    assert inside.flat[np.argmax(heat)]
    assert defect_p.mask[inside].mean() > 10 * defect_p.mask[~inside].mean() + 0.1
    assert defect_p.score > clean_p.score and defect_p.is_anomalous


def test_statistical_needs_its_reference_and_uses_the_channel_mean():
    config = RadarConfig(patch_size=16)
    method = StatisticalBaseline(config)
    gray = surfaces(1, seed=5)
    with pytest.raises(NotFittedError):
        method.analyse(gray)
    method.fit_reference(gray)
    as_rgb = np.repeat(gray[0], 3, axis=0)
    a, b = method.analyse([gray[0], as_rgb])
    np.testing.assert_allclose(a.features, b.features)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map)
    assert len(a.features) == len(method.feature_names)


def test_wrong_channel_count_is_a_data_error(gray_radar):
    with pytest.raises(DataError, match=r"\(1, H, W\)"):
        OneStepReconstruction(gray_radar).analyse(images(3, [(24, 24)]))
    with pytest.raises(DataError, match="smaller than"):
        OneStepReconstruction(gray_radar).analyse(images(1, [(8, 24)]))
