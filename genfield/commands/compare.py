"""``genfield compare``: a grid of methods x datasets under one budget (see genfield.comparison)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from genfield.commands.base import CONFIG_PATH, guard, run_dir


def run(cfg: DictConfig) -> None:
    from genfield.comparison import run_comparison
    from genfield.runfiles import check_writable
    from genfield.validation import validate_compare

    out = run_dir()
    validate_compare(OmegaConf.to_container(cfg, resolve=True))
    check_writable(out, "hydra.run.dir")
    rows = run_comparison(
        list(cfg.datasets),
        list(cfg.methods),
        str(cfg.field),
        OmegaConf.to_container(cfg.budget, resolve=True),
        out,
        seed=int(cfg.seed),
        device=str(cfg.device),
        data_overrides=OmegaConf.to_container(cfg.data_overrides, resolve=True),
        method_overrides=OmegaConf.to_container(cfg.method_overrides, resolve=True),
        field_overrides=OmegaConf.to_container(cfg.field_options, resolve=True),
        progress=bool(cfg.progress),
    )
    print((out / "results.md").read_text())
    print(f"{len(rows)} results; wrote {out}/results.csv, results.md and figures")


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="compare")
def app(cfg: DictConfig) -> None:
    guard(lambda: run(cfg))
