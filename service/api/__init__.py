"""One blueprint per resource: models, datasets, jobs, reports, keys, health."""
