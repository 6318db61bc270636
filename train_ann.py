"""Train an ANN (the conversion source). See conf/train_ann.yaml for usage; `--help` lists options."""
import hydra
from omegaconf import DictConfig

from msat.utils import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="train_ann")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    from msat.training import train

    return train(cfg)["best_acc"]


if __name__ == "__main__":
    main()
