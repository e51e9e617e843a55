"""The applications on top of the library core: the command line (cli, commands), the demo,
train-or-reuse steps (pipeline) and the paper reproductions (experiments). The core
(data, models, engine, attacks, ssl, defenses, adaptive, evaluation, auditing, report, zoo)
never imports this package."""
