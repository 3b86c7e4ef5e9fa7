"""Self-validation: one default chosen without labelled defects.

A user should not need to know whether a surface is "structured" or
"stochastic". Whatever the config leaves to calibration
(``inference.response: auto``, ``inference.scales: null``,
``inference.image_score: auto``) is chosen here, on the model's own normal
calibration images only (never the conformal ones, whose p-values would
lose their guarantee, and never test data):

1. the calibration images are split in two, seeded: the candidates learn
   and fit their normal levels on the first half;
2. each image of the second half is scored as it is, and
   ``inference.selection_copies`` copies of it with a generic synthetic
   defect (:mod:`radar_ad.defects`, clearly visible: at least three times
   the image's own fine-texture spread) pasted in;
3. every candidate (response x pyramid levels x image score) ranks those
   images, and those whose image AUROC is within one standard error
   (Hanley and McNeil) of the best one's rank them as well as any: a few
   dozen held-out images measure an AUROC to a few hundredths, and a
   candidate better by less than that is not known to be better. Among
   them the one whose map finds the synthetic defects' pixels best is
   chosen (its pixel AUROC; for a response computed per level, that of its
   best first levels, which step 4 can draw the map from), the first (the
   cheapest) on a tie: the model answers with a map and a mask, and a
   better map is worth its cost when the image ranking is even. When even the best
   is not two standard errors above chance (0.5), no candidate finds the
   synthetic defects on this surface and the ranking says nothing: the
   first candidate (the paper's kind of response on the finest level,
   through the one-class model) is kept, and the record says so. The
   choice's synthetic image and pixel AUROC, every other candidate's, and
   the standard error are recorded in the model file.
4. for a response computed per level, the pixel map is chosen apart from
   the image score, among the first level, the first two ... the chosen
   levels (``inference.map_scales``): the fewest levels whose synthetic
   pixel AUROC is within one standard error of the best one's (the error of
   the paired per-image differences). A coarse level can lift the image
   score and blur the map at once; the map keeps the finest levels that
   draw the defects as well as any.

Responses take part when they say so (``candidate``); a response computed
per level is tried on the network's first level, its first two, ... all of
them (one fit gives all of these); one that reads every level at once is
tried on all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from .config import AUTO, IMAGE_SCORES, RadarConfig
from .decision import MIN_CALIBRATION_IMAGES, ImageDecision
from .defects import KINDS, paste_into
from .features import map_scores
from .noise_map import Evidence
from .registry import RESPONSES
from .response import (
    EvidenceOf,
    EvidenceResponse,
    LevelFusion,
    ResponseOutput,
    build_response,
    learns_from_images,
    reads_every_level,
)

EvidenceMany = Callable[[Sequence[np.ndarray], str], list[Evidence]]
"""``(images (C, H, W) in [0, 1], description) -> one Evidence per image``, at every level of the network."""

SEED_OFFSET = 271_828  # the self-validation's draws, apart from every other use of the seed
# how visible a check defect is, in units of the surface's fine-texture spread
# (radar_ad.defects.visibility): clearly there, so candidates differ in what
# they find rather than all missing what nobody could see
CHECK_VISIBLE = 3.0
# The defect kinds in two groups, material added or replaced and the finish
# changed: a response that learns from synthetic defects is scored on each
# group by a twin that never learned that group (EvidenceResponse.without).
KIND_GROUPS = (("brightness", "texture"), ("contrast", "blur"))
# pixels of the synthetic defective images behind the pixel AUROC (evenly strided)
PIXEL_SAMPLE = 2_000_000
# pixels of one synthetic defective image behind its own pixel AUROC (evenly strided)
IMAGE_PIXELS = 65_536


@dataclass(frozen=True)
class Candidate:
    response: str
    scales: tuple[int, ...]
    image_score: str

    def settings(self) -> dict[str, Any]:
        return {"inference.response": self.response, "inference.scales": list(self.scales),
                "inference.image_score": self.image_score}

    def describe(self) -> str:
        return f"{self.response} on scales {'/'.join(map(str, self.scales))}, image score {self.image_score}"


@dataclass
class Selection:
    """What the self-validation chose and how every candidate did.
    ``response``: the chosen response when it learned from images (reused,
    not learned again), else ``None``; ``evidence``: the calibration
    images' evidence at every level of the network, in their order (for
    calibration to reuse), or ``None`` when none was computed."""

    chosen: Candidate
    requested: dict[str, Any]
    table: list[dict[str, Any]]
    n_fit: int
    n_check: int
    n_defective: int
    note: str = ""
    standard_error: float | None = None
    response: EvidenceResponse | None = field(default=None, repr=False)
    map_scales: tuple[int, ...] | None = None
    maps: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[Evidence] | None = field(default=None, repr=False)

    @property
    def synthetic_auroc(self) -> float | None:
        return next((row["image_auroc"] for row in self.table if row["chosen"]), None)

    def settings(self) -> dict[str, Any]:
        """The chosen settings, as dotted config keys."""
        map_scales = None if self.map_scales is None else list(self.map_scales)
        return {**self.chosen.settings(), "inference.map_scales": map_scales}

    def record(self) -> dict[str, Any]:
        """The JSON kept in ``radar.json``."""
        pixel = next((row["pixel_auroc"] for row in self.maps if row["chosen"]), None)
        if pixel is None:
            pixel = next((row["pixel_auroc"] for row in self.table if row["chosen"]), None)
        return {"requested": self.requested, "chosen": self.settings(),
                "synthetic_image_auroc": self.synthetic_auroc, "synthetic_pixel_auroc": pixel,
                "standard_error": self.standard_error,
                "images": {"fit": self.n_fit, "check": self.n_check, "defective": self.n_defective},
                "note": self.note, "candidates": self.table, "maps": self.maps}


def describe_record(record: dict[str, Any]) -> str:
    """One line for people from :meth:`Selection.record`: the choice and its synthetic AUROC."""
    chosen = record["chosen"]
    what = (f"self-validation chose response {chosen['inference.response']} on scales "
            f"{'/'.join(map(str, chosen['inference.scales']))}, image score {chosen['inference.image_score']}")
    auroc, images = record.get("synthetic_image_auroc"), record.get("images", {})
    map_scales = chosen.get("inference.map_scales")
    if map_scales is not None and map_scales != chosen["inference.scales"]:
        what += f", map from scales {'/'.join(map(str, map_scales))}"
    if auroc is None:
        return f"{what} ({record.get('note') or 'no self-validation'})"
    error = record.get("standard_error")
    within = "" if error is None else (f", the best map among those within one standard error ({error:.3f}) of "
                                       "the best")
    if record.get("note"):
        within = f"; {record['note']}"
    return (f"{what}: synthetic-defect image AUROC {auroc:.3f} ({images.get('check')} held-out normal images, "
            f"{images.get('defective')} defective copies; {len(record.get('candidates', []))} candidates{within})")


def requested(config: RadarConfig) -> dict[str, Any]:
    """The settings the selection resolves, as the config gives them."""
    inference = config.inference
    return {"inference.response": inference.response,
            "inference.scales": None if inference.scales is None else list(inference.scales),
            "inference.map_scales": None if inference.map_scales is None else list(inference.map_scales),
            "inference.image_score": inference.image_score}


def candidates(config: RadarConfig) -> list[Candidate]:
    """Every candidate the config leaves open, cheapest first: responses in
    name order (one computed per level before one that learns), fewer levels
    first, the response's features before a map statistic."""
    inference, network = config.inference, config.network
    if inference.response == AUTO:
        names = [name for name, entry in RESPONSES.items() if getattr(entry, "candidate", False)]
        names.sort(key=lambda name: learns_from_images(RESPONSES.get(name)))
    else:
        names = [inference.response]
    rules = [rule for rule in IMAGE_SCORES if rule != AUTO] if inference.image_score == AUTO else [
        inference.image_score]
    found = []
    for name in names:
        if reads_every_level(RESPONSES.get(name)):
            scale_sets = [tuple(network.scales)]
        elif inference.scales is None:
            first = len(inference.map_scales or (1,))  # a set of levels holds the map's levels
            scale_sets = [tuple(network.scales[:n]) for n in range(first, len(network.scales) + 1)]
        else:
            scale_sets = [tuple(inference.scales)]
        found += [Candidate(name, scales, rule) for scales in scale_sets for rule in rules]
    return found


def synthetic_copies(images: Sequence[np.ndarray], donors: Sequence[np.ndarray], copies: int,
                     rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """``copies`` defective copies of each image (foreign texture from
    ``donors``): images, masks and each defect's kind."""
    defective, masks, kinds = [], [], []
    for image in images:
        for _ in range(copies):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            copy, mask = paste_into(image, donors[int(rng.integers(len(donors)))], rng, kind, visible=CHECK_VISIBLE)
            defective.append(copy)
            masks.append(mask)
            kinds.append(kind)
    return defective, masks, kinds


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Image AUROC, or ``None`` with one class only or a non-finite score."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if len(set(labels.tolist())) < 2 or not np.isfinite(scores).all():
        return None
    return float(roc_auc_score(labels, scores))


def auroc_standard_error(value: float, n_normal: int, n_defective: int) -> float:
    """Hanley and McNeil's (1982) standard error of an image AUROC ``value``
    from ``n_normal`` and ``n_defective`` images."""
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    variance = (value * (1 - value) + (n_defective - 1) * (q1 - value**2)
                + (n_normal - 1) * (q2 - value**2)) / (n_normal * n_defective)
    return float(np.sqrt(max(variance, 0.0)))


def best_map_within_one_standard_error(aurocs: Sequence[float], maps: Sequence[float], error: float) -> int:
    """Among the indices whose image AUROC is within ``error`` of the best,
    the one whose map's pixel AUROC (``maps``) is highest; the first (the
    cheapest) on a tie."""
    best = max(aurocs)
    within = [i for i, value in enumerate(aurocs) if value >= best - error - 1e-12]
    return max(within, key=lambda i: (maps[i], -i))


def map_auroc(option: Candidate, pooled: dict[tuple[str, tuple[int, ...]], float],
              map_scales: Sequence[int] | None) -> float:
    """The synthetic pixel AUROC of the best map ``option`` can draw: a
    response computed per level draws it from its first levels (the best
    of those scored, unless ``map_scales`` names them), any other from all
    it reads."""
    if map_scales is not None or reads_every_level(RESPONSES.get(option.response)):
        return pooled.get((option.response, tuple(map_scales or option.scales)), pooled[(option.response,
                                                                                           option.scales)])
    return max(pooled[(option.response, option.scales[:k])] for k in range(1, len(option.scales) + 1)
               if (option.response, option.scales[:k]) in pooled)


def _pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float | None:
    values = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    truth = np.concatenate([mask.ravel() for mask in masks])
    step = max(1, len(values) // PIXEL_SAMPLE)
    return auroc(truth[::step].astype(int), values[::step])


def _image_pixel_aurocs(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[float]:
    """Each defective image's own pixel AUROC (NaN where its mask is empty or
    full), at most :data:`IMAGE_PIXELS` evenly strided pixels each."""
    values = []
    for anomaly, mask in zip(maps, masks):
        step = max(1, anomaly.size // IMAGE_PIXELS)
        value = auroc(mask.ravel()[::step].astype(int), np.asarray(anomaly, dtype=np.float32).ravel()[::step])
        values.append(np.nan if value is None else value)
    return values


def choose_map(keys: Sequence[tuple[str, tuple[int, ...]]], pooled: dict[Any, float],
               per_image: dict[Any, np.ndarray]) -> tuple[int, list[dict[str, Any]]]:
    """Among the maps ``keys`` (fewest levels first), the first whose pooled
    pixel AUROC is within one standard error of the best one's, the error of
    the mean of their paired per-image pixel AUROC differences; and the rows
    recorded for each."""
    values = [pooled[key] for key in keys]
    best = int(np.argmax(values))
    errors = []
    for key in keys:
        difference = per_image[key] - per_image[keys[best]]
        difference = difference[np.isfinite(difference)]
        errors.append(float(np.std(difference, ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0)
    pick = next(k for k, value in enumerate(values) if value >= values[best] - errors[k] - 1e-12)
    rows = [{"inference.map_scales": list(key[1]), "pixel_auroc": values[k], "standard_error": errors[k],
             "chosen": k == pick} for k, key in enumerate(keys)]
    return pick, rows


def _fused(outputs: list[ResponseOutput], keep: list[int], size: tuple[int, int]) -> ResponseOutput:
    """The output of the levels ``keep`` (their maps fused at the finest level ``size``)."""
    return LevelFusion.fuse([outputs[k] for k in keep], size)


@dataclass
class Prepared:
    """Every candidate response learned and fitted on normal images, those
    images' evidence, and their image features (for the one-class model of
    a candidate that scores by the response's features)."""

    config: RadarConfig
    options: list[Candidate]
    responses: dict[str, EvidenceResponse]
    widest: dict[str, tuple[int, ...]]
    evidence: list[Evidence]
    fit_features: dict[tuple[str, tuple[int, ...]], np.ndarray] = field(default_factory=dict)

    def keep(self, name: str, scales: tuple[int, ...]) -> list[int]:
        response = self.responses[name]
        return [self.widest[name].index(s) for s in scales] if isinstance(response, LevelFusion) else [0]

    def outputs(self, name: str, evidence: Evidence) -> list[ResponseOutput]:
        """Each level's output (a per-level response) or the one output, of one batch of evidence."""
        response = self.responses[name]
        if isinstance(response, LevelFusion):
            return response.respond_levels(evidence)
        return [response.respond(evidence)]

    def featurise(self, names: Sequence[str]) -> Prepared:
        """Compute the normal images' features of the responses ``names``."""
        for name in names:
            outputs = [self.outputs(name, item) for item in self.evidence]
            for scales in dict.fromkeys(option.scales for option in self.options if option.response == name):
                self.fit_features[(name, scales)] = np.concatenate(
                    [_fused(levels, self.keep(name, scales), item.size).features.numpy()
                     for levels, item in zip(outputs, self.evidence)])
        return self

    def without(self, kinds: Sequence[str]) -> Prepared:
        """The candidates as they would be had none learned from synthetic defects of ``kinds``."""
        responses = {name: response.without(kinds) for name, response in self.responses.items()}
        changed = [name for name in responses if responses[name] is not self.responses[name]]
        twin = Prepared(self.config, self.options, responses, self.widest, self.evidence,
                        {key: value for key, value in self.fit_features.items() if key[0] not in changed})
        return twin.featurise(changed)


def prepare(config: RadarConfig, options: Sequence[Candidate], images: Sequence[np.ndarray],
            evidence_many: EvidenceMany, evidence_of: EvidenceOf, progress: bool = False) -> Prepared:
    """Learn (where a response learns from images) and fit every response
    of ``options`` on the normal ``images``, at the widest levels any option
    of it reads."""
    evidence = evidence_many(images, "candidates: normal images")
    responses, widest = {}, {}
    for name in dict.fromkeys(option.response for option in options):
        mine = [option for option in options if option.response == name]
        widest[name] = max((option.scales for option in mine), key=len)
        response = build_response(config, name, widest[name], "features").learn(images, evidence_of, progress)
        responses[name] = response.fit(lambda: evidence)
    return Prepared(config, list(options), responses, widest, evidence).featurise(list(responses))


@dataclass
class Evaluated:
    """Every candidate's image scores of the evaluated images, in order, and
    (when kept) the anomaly maps of each response and levels."""

    scores: dict[Candidate, np.ndarray]
    maps: dict[tuple[str, tuple[int, ...]], list[np.ndarray]]


def evaluate(prepared: Prepared, images: Sequence[np.ndarray], evidence_many: EvidenceMany,
             keep_maps: bool = False, chunk: int = 16, desc: str = "candidates: scoring",
             held: Sequence[Evidence] = ()) -> Evaluated:
    """Score with every candidate the images whose evidence is ``held``,
    then ``images`` (``(C, H, W)`` in [0, 1]), whose evidence is computed
    ``chunk`` images at a time (memory: one chunk's evidence, the scores,
    the features and the kept maps). A candidate that scores by the
    one-class model scores all its images' features in one call."""
    config = prepared.config
    decisions = {}
    for option in prepared.options:
        if option.image_score == "features":
            decisions[option] = ImageDecision(config.decision, config.seed).fit(
                prepared.fit_features[(option.response, option.scales)])
    scores: dict[Candidate, list[float]] = {option: [] for option in prepared.options}
    features: dict[Candidate, list[np.ndarray]] = {option: [] for option in decisions}
    maps: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
    scale_sets = {}
    for name, response in prepared.responses.items():
        sets = [o.scales for o in prepared.options if o.response == name]
        if keep_maps and isinstance(response, LevelFusion):  # the map of every first few levels
            widest = prepared.widest[name]
            sets += [widest[:k] for k in range(1, len(widest) + 1)]
        scale_sets[name] = list(dict.fromkeys(sets))

    def stream() -> Iterator[Evidence]:
        yield from held
        for start in range(0, len(images), chunk):
            yield from evidence_many(images[start:start + chunk], desc)

    for item in stream():
        for name in prepared.responses:
            outputs = prepared.outputs(name, item)
            for scales in scale_sets[name]:
                fused = _fused(outputs, prepared.keep(name, scales), item.size)
                if keep_maps:
                    maps.setdefault((name, scales), []).append(fused.anomaly_map[0].float().cpu().numpy())
                for option in (o for o in prepared.options if o.response == name and o.scales == scales):
                    if option in decisions:
                        features[option].append(fused.features.numpy())
                    else:
                        scores[option].append(float(map_scores(fused.anomaly_map, option.image_score,
                                                               config.inference.score_window)[0, 0]))
    for option, rows in features.items():
        scores[option] = decisions[option].score(np.concatenate(rows)).tolist() if rows else []
    return Evaluated({option: np.array(values) for option, values in scores.items()}, maps)


def choose(config: RadarConfig, images: Sequence[np.ndarray], evidence_many: EvidenceMany,
           evidence_of: EvidenceOf, progress: bool = False) -> Selection:
    """Choose among :func:`candidates` on the normal calibration ``images``
    (``(C, H, W)`` in [0, 1]); see the module docstring."""
    options = candidates(config)
    asked = requested(config)
    n = len(images)
    n_fit = max(MIN_CALIBRATION_IMAGES, n // 2)
    if len(options) == 1 or n - n_fit < 2:
        note = ("one candidate" if len(options) == 1 else
                f"{n} calibration images are too few to hold out a check half; the first candidate is kept")
        return Selection(options[0], asked, [], 0, 0, 0, note, map_scales=config.inference.map_scales)
    rng = np.random.default_rng([config.seed, SEED_OFFSET])
    order = rng.permutation(n)
    fit = [images[i] for i in sorted(order[:n_fit].tolist())]
    check = [images[i] for i in sorted(order[n_fit:].tolist())]
    defective, masks, kinds = synthetic_copies(check, fit, config.inference.selection_copies, rng)
    prepared = prepare(config, options, fit, evidence_many, evidence_of, progress)
    # the check images' evidence serves every kind group, and then calibration
    held = evidence_many(check, "self-validation: held-out images")
    image_aurocs: dict[Candidate, list[float]] = {option: [] for option in options}
    map_pooled: dict[tuple[str, tuple[int, ...]], list[float]] = {}
    map_images: dict[tuple[str, tuple[int, ...]], list[float]] = {}
    group_sizes = []
    for group in KIND_GROUPS:
        picked = [i for i, kind in enumerate(kinds) if kind in group]
        if not picked:
            continue
        group_sizes.append(len(picked))
        fold = prepared.without(group)
        evaluated = evaluate(fold, [defective[i] for i in picked], evidence_many, keep_maps=True,
                             desc="self-validation: defective images", held=held)
        labels = np.array([0] * len(check) + [1] * len(picked))
        for option in options:
            image_aurocs[option].append(auroc(labels, evaluated.scores[option]) or 0.0)
        group_masks = [masks[i] for i in picked]
        for key, key_maps in evaluated.maps.items():
            map_pooled.setdefault(key, []).append(_pixel_auroc(key_maps[len(check):], group_masks) or 0.0)
            map_images.setdefault(key, []).extend(_image_pixel_aurocs(key_maps[len(check):], group_masks))
    pooled = {key: float(np.mean(values)) for key, values in map_pooled.items()}
    table = [{**option.settings(), "image_auroc": float(np.mean(image_aurocs[option])),
              "pixel_auroc": pooled[(option.response, option.scales)], "chosen": False} for option in options]
    aurocs = [row["image_auroc"] for row in table]
    # the error of a mean over the kind groups, each scored on the check
    # images and its own defective copies
    error = float(np.sqrt(sum(auroc_standard_error(max(aurocs), len(check), size) ** 2
                              for size in group_sizes)) / len(group_sizes))
    note = ""
    if max(aurocs) < 0.5 + 2 * error:
        best = 0
        note = (f"no candidate ranks the synthetic defects above chance (best {max(aurocs):.3f}, two standard "
                f"errors {2 * error:.3f}): the first candidate is kept")
    else:
        maps = [map_auroc(option, pooled, config.inference.map_scales) for option in options]
        best = best_map_within_one_standard_error(aurocs, maps, error)
    table[best]["chosen"] = True
    chosen = options[best]
    learned = prepared.responses[chosen.response]
    if learns_from_images(learned):
        learned.image_score = chosen.image_score  # it learned with every image score open; it keeps the chosen one
    map_scales = config.inference.map_scales
    map_rows: list[dict[str, Any]] = []
    if map_scales is None and isinstance(learned, LevelFusion) and len(chosen.scales) > 1:
        keys = [(chosen.response, chosen.scales[:k]) for k in range(1, len(chosen.scales) + 1)]
        pick, map_rows = choose_map(keys, pooled, {key: np.array(map_images[key]) for key in keys})
        map_scales = keys[pick][1]
    evidence = dict(zip(sorted(order[:n_fit].tolist()), prepared.evidence))
    evidence.update(zip(sorted(order[n_fit:].tolist()), held))
    return Selection(chosen, asked, table, len(fit), len(check), len(defective), note, error,
                     response=learned if learns_from_images(learned) else None, map_scales=map_scales,
                     maps=map_rows, evidence=[evidence[i] for i in range(n)])
