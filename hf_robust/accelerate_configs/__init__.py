"""accelerate launch configurations shipped with hf-robust (`--accelerate_config NAME`)."""
