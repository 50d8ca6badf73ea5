"""``genfield demo``: the main job on built-in data (see ``genfield/configs/demo.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from genfield.commands.base import CONFIG_PATH, guard, run_dir
from genfield.commands.compare import run as run_compare


def run(cfg: DictConfig) -> None:
    run_compare(cfg)
    out = run_dir()
    print(
        "demo done: open\n"
        f"  {out / 'faces' / 'reconstructions.png'}  (ground truth | context | reconstruction | "
        "error | predictive std per method)\n"
        f"  {out / 'results.md'}  (PSNR table)\n"
        f"  {out / 'faces_psnr_vs_steps.png'}  (PSNR against adaptation steps)"
    )


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="demo")
def app(cfg: DictConfig) -> None:
    guard(lambda: run(cfg))
