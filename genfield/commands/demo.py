"""``genfield demo``: the main job on built-in data (see ``genfield/configs/demo.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from genfield.commands.base import CONFIG_PATH, guard, run_dir
from genfield.commands.compare import run as run_compare


def run(cfg: DictConfig) -> None:
    run_compare(cfg)
    out = run_dir()
    lines = ["demo done: open"]
    for data in cfg.datasets:
        lines.append(
            f"  {out / data / 'reconstructions.png'}  (ground truth | context | reconstruction | "
            "error | predictive std per method)"
        )
    lines.append(f"  {out / 'results.md'}  (PSNR table)")
    lines.extend(
        f"  {out / f'{data}_psnr_vs_steps.png'}  (PSNR against adaptation steps)" for data in cfg.datasets
    )
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="demo")
def app(cfg: DictConfig) -> None:
    guard(lambda: run(cfg))
