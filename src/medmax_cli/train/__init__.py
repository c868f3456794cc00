"""Fine-tuning on packed shards: config, recipe (setup + loop), launcher, checkpoints, metrics."""
