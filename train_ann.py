"""Train an ANN (the conversion source): ``python train_ann.py dataset=cifar10 model=vgg16``."""
import hydra
from omegaconf import DictConfig

from msat.cli import exit_on_user_error, run_cli
from msat.config import TrainRunConfig
from msat.hydra_schema import register

register()


@hydra.main(config_path="conf", config_name="train_ann", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    from msat.training import train

    return train(cfg)["best_acc"]


if __name__ == "__main__":
    run_cli(main, TrainRunConfig)
