"""Where the weights come from: model strings (HF ids, folders, `random:`) and random-weight
checkpoints with the real layout, so everything runs without a model hub."""
