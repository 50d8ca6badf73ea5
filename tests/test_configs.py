"""Every method x data x field composition of genfield's configs composes and builds, untrained.

Each composition is composed through Hydra's compose API on genfield's config path, at a tiny size
(the presets' tiny data overrides); the built method is of the class its ``_target_`` names, and one
reconstruction of a two-signal test batch is finite, with one value per dense query and channel.
A stored run config without ``_target_`` (a checkpoint written before configs named their
classes) builds the same objects.
"""

import functools

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_presets import CONFIGS, SMALL_NETWORK, TINY
from test_views import write_srn_object

from genfield.builders import build_data, build_field_for, build_method, with_targets
from genfield.errors import InputError
from genfield.fields import Field
from genfield.kinds import get_kind
from genfield.targets import built_class, locate

METHODS, DATA, FIELDS = (
    sorted(p.stem for p in (CONFIGS / g).glob("*.yaml")) for g in ("method", "data", "field")
)
#: methods that only apply to the kinds with a linear forward map over pixels
PIXEL_METHODS, PIXEL_KINDS = ("prior_residual",), ("image", "ct")
#: smaller networks and solves, each applied where the group entry has the key
SMALL = [
    *SMALL_NETWORK,
    "field.options.fourier_features=16",
    "field.options.hashgrid.n_levels=2",
    "field.options.hashgrid.log2_hashmap_size=8",
    "method.options.width=16",
    "method.options.latent_dim=8",
    "method.options.depth=1",
    "method.options.max_tokens=64",
    "method.options.inner_steps=1",
    "method.options.cg_iterations=2",
    "method.options.by_kind.ct.cg_iterations=2",
    "method.options.steps=1",
    "method.options.channels=[8,16]",
]
#: what each folder-backed data config reads, written by the ``folders`` fixture
ROOTS = {
    "images": "images",
    "ct_images": "images",
    "mesh_folder": "meshes",
    "nerf_synthetic": "views",
    "srn": "srn",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("config_data")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(10):
        iio.imwrite(root / "images" / f"im{i}.png", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    (root / "meshes").mkdir()
    for i in range(10):
        trimesh.creation.icosphere(1, radius=0.3 + 0.05 * i).export(root / "meshes" / f"m{i}.obj")
    for i in range(8):
        write_srn_object(root / "srn" / f"car{i}", seed=i)
    return {
        **{name: root / name for name in ("images", "meshes", "srn")},
        "views": root / "views",
        "cache": root,
    }


def overrides(method: str, data: str, field: str, folders) -> list[str]:
    data_cfg = OmegaConf.load(CONFIGS / "data" / f"{data}.yaml")
    entries = {"method": OmegaConf.load(CONFIGS / "method" / f"{method}.yaml"), "data": data_cfg}
    entries["field"] = OmegaConf.load(CONFIGS / "field" / f"{field}.yaml")

    def present(override: str) -> bool:
        group, key = override.split("=")[0].split(".", 1)
        return OmegaConf.select(entries[group], key) is not None

    tiny = [o for o in TINY[data_cfg.kind] if present(o)]
    extra = ["data.n_signals=4"] if data in ("glyphs", "ct_images") else []
    if data in ROOTS:
        extra.append(f"data.root={folders[ROOTS[data]]}")
    if "cache_dir" in data_cfg:
        extra.append(f"data.cache_dir={folders['views' if data == 'views' else 'cache']}")
    if data in ("nerf_synthetic", "srn"):
        extra = [*extra, "data.n_samples=8", "data.rays_per_signal=32", "data.eval_signals=1"]
    return [
        f"method={method}",
        f"data={data}",
        f"field={field}",
        *tiny,
        *extra,
        *filter(present, SMALL),
    ]


@functools.cache
def _composed_node(overrides: tuple[str, ...]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def composed(method: str, data: str, field: str, folders, full: bool = False) -> dict:
    """The train config of one composition, as plain resolved containers.

    Hydra composes the groups of ``train.yaml`` independently (no group entry refers to another), so
    the data config composed with its overrides, given the method and field nodes composed each
    once, is the composition (``full=True`` composes it whole; a test checks they agree): a
    compose costs ~0.4 s and there are hundreds of compositions.
    """
    every = overrides(method, data, field, folders)
    if full:
        return OmegaConf.to_container(_composed_node(tuple(every)), resolve=True)
    own = {
        g: tuple(o for o in every if o.startswith((f"{g}=", f"{g}."))) for g in ("method", "data", "field")
    }
    cfg = _composed_node(own["data"]).copy()
    cfg.method, cfg.field = _composed_node(own["method"]).method, _composed_node(own["field"]).field
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def bundles(folders):
    """Each data config's bundle and two-signal test batch, built once (the views first: the
    NeRF-synthetic config reads the scenes they write)."""
    built = {}

    def get(config):
        name = config["data"]["name"]
        if name == "nerf_synthetic" and "views" not in built:
            get(composed("maml", "views", "siren", folders))
        if name not in built:
            torch.manual_seed(0)
            bundle = build_data(config["data"], seed=0)
            built[name] = bundle, bundle.eval_batch("test", count=2)
        return built[name]

    return get


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("method", METHODS)
def test_composition_builds_the_named_class_and_reconstructs(method, data, field, folders, bundles):
    config = composed(method, data, field, folders)
    bundle, batch = bundles(config)
    torch.manual_seed(0)
    built_field = build_field_for(config["field"], bundle)
    if method in PIXEL_METHODS and bundle.kind not in PIXEL_KINDS:
        with pytest.raises(InputError, match=f"linear forward map over pixels .*not '{bundle.kind}'"):
            build_method(config["method"], built_field, bundle)
        return
    built = build_method(config["method"], built_field, bundle)
    assert type(built_field) is built_class(locate(config["field"]["_target_"], "field._target_")) is Field
    assert type(built) is built_class(locate(config["method"]["_target_"], "method._target_"))
    assert built_field.config.hidden == 16 and built_field.config.in_dim == get_kind(bundle.kind).in_dim
    queries, query_map = get_kind(bundle.kind).dense_queries(batch)
    prediction = built.reconstruct(
        batch.context, batch.forward_map, queries, query_map, steps=1, num_samples=2
    )
    channels = batch.target.values.shape[-1]
    assert prediction.mean.shape == (batch.num_signals, queries.shape[1], channels)
    assert torch.isfinite(prediction.mean).all()
    if prediction.variance is not None:
        assert (
            prediction.variance.shape == prediction.mean.shape and torch.isfinite(prediction.variance).all()
        )


def _legacy(config: dict) -> dict:
    """``config`` as a run stored it before configs named their classes: no ``_target_``, and
    fomaml's first-order flag implied by its name."""
    method = {k: v for k, v in config["method"].items() if k != "_target_"}
    method["options"] = {k: v for k, v in method["options"].items() if k != "first_order"}
    field = {k: v for k, v in config["field"].items() if k != "_target_"}
    return {**config, "method": method, "field": field}


@pytest.mark.parametrize("method", [m for m in METHODS if m not in PIXEL_METHODS])  # born with a target
def test_a_stored_config_without_targets_builds_the_same_and_resumes(method, folders, bundles):
    config = composed(method, "faces", "siren", folders)
    bundle, _ = bundles(config)
    legacy = _legacy(config)
    assert with_targets(legacy) == config  # so resuming an old run compares equal to today's config
    torch.manual_seed(0)
    new = build_method(config["method"], build_field_for(config["field"], bundle), bundle)
    torch.manual_seed(0)
    old = build_method(legacy["method"], build_field_for(legacy["field"], bundle), bundle)
    assert type(old) is type(new)
    assert vars(old).keys() == vars(new).keys()
    for key, value in vars(new).items():
        if isinstance(value, int | float | str | bool | tuple) or value is None:
            assert getattr(old, key) == value, key
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_config_naming_another_class_builds_it_and_bad_targets_are_one_line(folders, bundles):
    config = composed("maml", "faces", "siren", folders)
    bundle, _ = bundles(config)
    field = build_field_for(config["field"], bundle)
    # a user's learner: any class taking (field, **options) -- here Reptile under the MAML config
    options = {k: v for k, v in config["method"]["options"].items() if k not in ("first_order", "meta_sgd")}
    custom = {**config["method"], "_target_": "genfield.meta.Reptile", "options": options}
    assert type(build_method(custom, field, bundle)).__name__ == "Reptile"
    with pytest.raises(InputError, match=r"method._target_='genfield.meta.Nope': no class or function"):
        build_method({**config["method"], "_target_": "genfield.meta.Nope"}, field, bundle)
    typo = {**config["method"], "options": {**config["method"]["options"], "inner_lrr": 0.1}}
    with pytest.raises(InputError, match=r"takes no option\(s\) \['inner_lrr'\]; valid: .*'inner_lr'"):
        build_method(typo, field, bundle)
    with pytest.raises(InputError, match=r"field._target_='genfield.fields.Nope'"):
        build_field_for({**config["field"], "_target_": "genfield.fields.Nope"}, bundle)


@pytest.mark.parametrize(
    "method, data, field",
    [("maml", "faces", "siren"), ("ponp", "ct_phantoms", "hashgrid"), ("np", "views", "relu_pe")],
)
def test_groups_composed_apart_are_the_composition(method, data, field, folders):
    assert composed(method, data, field, folders) == composed(method, data, field, folders, full=True)


def test_every_group_entry_names_an_importable_target():
    for group in ("method", "field"):
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            target = OmegaConf.load(path)["_target_"]
            assert isinstance(built_class(locate(target, f"{path.stem}._target_")), type), path
