"""The real-model CAT benchmark's record, resumable model by model (`benchmarks/cat_real.py`): a resumed record must
share the run's settings; each model is a stage that is kept once measured, measured from its saved folder, or
trained; and a safety-tuned checkpoint that is gone is trained again and compared by its weights' digest."""

import hashlib
import json
import time
from pathlib import Path


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# Settings a resumed record must share with the run that resumes it (else its stages would not be comparable).
RESUMED_SETTINGS = ("model", "training_attack", "evaluation", "steps", "lora", "data_mix")
# What a record written before a setting existed was run with.
SETTING_DEFAULTS = {"data_mix": "control-rows"}


def _comparable(key: str, value):
    """A setting as a resumed record must share it: GCG's number of behaviours may grow (models measured without
    GCG get it measured; each model records its own `gcg_behaviours`)."""
    return {**value, "gcg_behaviours": None} if key == "evaluation" else value


def start_record(options, record: dict, path: Path) -> dict:
    """`record` for a fresh run; with `options.resume`, the one at `path` (its settings must agree)."""
    if not options.resume or not path.is_file():
        return record
    earlier = json.loads(path.read_text())
    differing = [key for key in RESUMED_SETTINGS
                 if _comparable(key, earlier.get(key, SETTING_DEFAULTS.get(key))) != _comparable(key, record[key])]
    if differing:
        raise SystemExit(f"--resume: {path} was recorded with other {differing}; rerun without --resume "
                         "(or with another --record) to start afresh")
    earlier.update({key: value for key, value in SETTING_DEFAULTS.items() if key not in earlier})
    recorded_gcg = earlier["evaluation"]["gcg_behaviours"]
    for models in earlier["seeds"].values():  # GCG measured before models recorded their own count
        for measured in models.values():
            if "gcg_asr" in measured:
                measured.setdefault("gcg_behaviours", recorded_gcg)
    earlier["evaluation"]["gcg_behaviours"] = max(recorded_gcg, record["evaluation"]["gcg_behaviours"])
    return earlier


def weights_digest(model) -> str:
    """sha256 of the model's weights (each tensor's name, dtype, shape and bytes, in state-dict order): a checkpoint
    trained again is the same checkpoint exactly when this agrees."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def keep_if_same_checkpoint(seed_record: dict, earlier: dict, seed) -> None:
    """The models in `earlier` were measured from a safety-tuned checkpoint that is gone (e.g. on a fresh clone):
    they are kept when the one just trained again has the recorded weights (`weights_sha256`), so a record can grow
    over sessions whose saved models do not survive; otherwise they are trained and measured anew."""
    later = {name: measured for name, measured in earlier.items() if name != "safety-tuned"}
    if not later:
        return
    recorded = earlier.get("safety-tuned", {}).get("weights_sha256")
    now = seed_record["safety-tuned"]["weights_sha256"]
    if recorded == now:
        print(f"seed {seed}: the safety-tuned checkpoint trained again has the recorded weights (sha256 {now[:12]}), "
              f"so {list(later)} measured from it are kept", flush=True)
        seed_record.update(later)
    else:
        why = "differs from the recorded one" if recorded else "cannot be compared (no weights_sha256 recorded)"
        print(f"seed {seed}: the safety-tuned checkpoint trained again {why}, so {list(later)} are measured anew "
              "(from another checkpoint they would be incomparable)", flush=True)


def load_saved(folder: Path):
    """A stage's saved model, on the GPU when there is one, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).to("cuda" if on_gpu() else "cpu").eval()


def stage(seed_record: dict, name: str, folder: Path, build, measure_model, machine: str, top_ups=None,
          save=None) -> None:
    """One model of the benchmark, resumable: measured already -> kept; its saved model in `folder` -> measured;
    otherwise `build()` trains it (returns the model and seconds per step), it is saved, then measured.
    `top_ups` = {key: measure(model) -> dict}: a model measured before `key` existed gets it measured from its saved
    folder (else it stays without it: the table shows "–"). Of what that measures, keys the record already has are
    kept, and a differing re-measurement is kept beside them as `{key}_rerun`. Each top-up is recorded (`save()`) as
    it is measured, so a run cut in the middle of a model's top-ups keeps those it finished."""

    if name in seed_record:
        missing = {key: measure_missing for key, measure_missing in (top_ups or {}).items()
                   if key not in seed_record[name]}
        if missing and (folder / "config.json").is_file():
            model = load_saved(folder)
            for key, measure_missing in missing.items():
                if key in seed_record[name]:  # measured by an earlier top-up of this stage
                    continue
                print(f"  {name}: measured earlier without {key}, measuring it", flush=True)
                for measured_key, value in measure_missing(model).items():
                    if measured_key not in seed_record[name]:
                        seed_record[name][measured_key] = value
                    elif seed_record[name][measured_key] != value:
                        print(f"  {name}: {measured_key} re-measured as {value} (recorded: "
                              f"{seed_record[name][measured_key]})", flush=True)
                        seed_record[name][f"{measured_key}_rerun"] = value
                seed_record[name][f"{key}_machine"] = machine
                if save is not None:
                    save()
            del model
            return
        print(f"  {name}: measured earlier ({seed_record[name].get('machine', '?')}), kept", flush=True)
        return
    if (folder / "config.json").is_file() and (folder / "stage.json").is_file():
        model = load_saved(folder)
        trained = json.loads((folder / "stage.json").read_text())
        print(f"  {name}: trained earlier ({trained['machine']}), measuring", flush=True)
    else:
        model, seconds_per_step = build()
        model.save_pretrained(folder)
        trained = {"seconds_per_step": seconds_per_step, "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M")}
        (folder / "stage.json").write_text(json.dumps(trained))
    seed_record[name] = {**measure_model(model), "seconds_per_step": trained["seconds_per_step"], "machine": machine,
                         "trained_on": trained["machine"], "measured": time.strftime("%Y-%m-%d %H:%M")}
    del model
