"""The domain, as pure functions over Arrow tables: dedup resolution, the rule, protected strata,
the prune lifecycle, replay sampling, the trainer's dataloader."""
