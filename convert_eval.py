"""Convert a trained ANN to an SNN and evaluate it: ``python convert_eval.py dataset=digits neuron=msat``."""
import hydra
from omegaconf import DictConfig

from msat.evaluate import run
from msat.utils import exit_on_user_error


@hydra.main(config_path="conf", config_name="convert_eval", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Run one conversion; a sweep that sets ``objective_T`` gets the accuracy at that T back."""
    return run(cfg).get("objective")


if __name__ == "__main__":
    main()
