"""Convert a trained ANN to an SNN and evaluate it: ``python convert_eval.py method=msat_sc T=256``."""
import hydra
from omegaconf import DictConfig

from msat.cli import exit_on_user_error, run_cli
from msat.config import EvalConfig
from msat.hydra_schema import register

register()


@hydra.main(config_path="conf", config_name="convert_eval", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Run one conversion; a sweep that sets ``objective_T`` gets the accuracy at that T back."""
    from msat.evaluate import run

    return run(cfg).get("objective")


if __name__ == "__main__":
    run_cli(main, EvalConfig)
