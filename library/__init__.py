"""Computer-vision experiment campaigns on Ray: one folder per domain, the plumbing they share at the top.

    config.py      typed configs: the Config base (checks chained through super()), --key=value overrides
    cli.py         the shared __main__ of every job: parse, banner, run, clear errors
    runtime.py     where code runs: device, seeding, allocator, threads, the collector after a job's imports,
                   git SHA, reading tensor files
    cluster.py     Ray's edges: connecting the driver (ray_init), a task's resources (remote_task), SIGTERM
    worker_start.py what Ray runs in each worker before it takes work: the collector paused while it loads
    tracking.py    MLflow: the store (opened while a job starts), runs, provenance tags
    model_store.py trained models in MLflow: logged with their rebuild spec, registered, loaded back
    plots.py       figures every domain draws: training curves, filter grids, image grids
    stats.py       intervals every domain reports (Wilson, for proportions)
    explain.py     looking inside classifiers: top-k, feature maps, CAM, saliency
    data/          data sets as on-device tensors, batched augmentation, the locked download, photo sets
    models/        the model registry: create_model(name, **kw), layers, convolution from scratch
    train/         one training run: the recipe (TrainConfig), the loop, per-iteration metrics, a fit as a unit
    search/        Ray Tune: search spaces, sweeps, their MLflow runs and outcome, studies, the two reports
    pretrained/    timm backbones and their weights, cached features, linear probes, fine-tuning
    adversarial/   attacks and the attack table, ε-sweeps, D2's transformations, images from input gradients
    campaign/      the catalog (A1…F1) as data; its jobs run as drivers of one cluster, resumable; the report

Plumbing and data/ and models/ import no domain folder; a domain imports the plumbing, and only train/ ->
adversarial/ (PGD for adversarial training) and search/ -> train/ across domains; campaign/ imports no domain
(it runs their jobs as processes and reads their MLflow runs). Ray is imported only inside
functions, so the reports and notebooks that rebuild results from MLflow run without it
(tests/test_architecture.py checks all of this).
"""
__version__ = "0.1.0"
