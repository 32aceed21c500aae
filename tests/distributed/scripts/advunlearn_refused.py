"""Build AdvUnlearnTrainer under an engine that shards the weights; report the refusal and that nothing changed."""

import tempfile

from hf_robust.erasure import AdvUnlearnConfig, AdvUnlearnTrainer
from hf_robust.testing import finish_distributed, save_rank_result, tiny_sd_components, training_arguments_for_engine


def main() -> None:
    components = tiny_sd_components(seed=0)
    encoder = components["text_encoder"]
    before = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
    with tempfile.TemporaryDirectory() as output_dir:
        args = AdvUnlearnConfig(output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none",
                                save_strategy="no", disable_tqdm=True, max_steps=1, ddim_steps=4, attack_steps=1)
        try:
            AdvUnlearnTrainer(components, args, concepts=["nudity"])
            message = None
        except ValueError as error:
            message = str(error)
    untouched = all(tensor.equal(before[name]) for name, tensor in encoder.state_dict().items())
    save_rank_result({"message": message, "untouched": untouched})


if __name__ == "__main__":
    main()
    finish_distributed()
