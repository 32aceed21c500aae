"""Build UnlearnTrainer with a smoothing the launched engine cannot run; report the refusal and that no step ran.

Usage: unlearn_refused.py SMOOTHING
"""

import sys
import tempfile

from hf_robust.testing import finish_distributed, save_rank_result, tiny_causal_lm, training_arguments_for_engine
from hf_robust.unlearning import UnlearnConfig, UnlearnTrainer

from unlearn_tiny import token_rows


def main(smoothing: str) -> None:
    model, tokenizer = tiny_causal_lm("llama")
    with tempfile.TemporaryDirectory() as output_dir:
        args = UnlearnConfig(output_dir=output_dir, **training_arguments_for_engine(), bf16=False, report_to="none",
                             save_strategy="no", disable_tqdm=True, max_steps=1, per_device_train_batch_size=2,
                             method="npo", smoothing=smoothing)
        try:
            UnlearnTrainer(model=model, args=args, forget_dataset=token_rows(4, 1), retain_dataset=token_rows(4, 2),
                           processing_class=tokenizer)
            message = None
        except ValueError as error:
            message = str(error)
    untouched = all(parameter.grad is None for parameter in model.parameters())
    save_rank_result({"message": message, "untouched": untouched})


if __name__ == "__main__":
    main(sys.argv[1])
    finish_distributed()
