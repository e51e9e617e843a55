"""mao2021 ("Adversarial Attacks are Reversible with Natural Supervision") reproduced whole,
with lawhon's multi-task repair, on the zoo's Fashion-MNIST CNNs (or a user's models and
data: ``--dataset cifar10 --data-root DIR --classifiers ... --heads ...``).

Stages (each a set of resumable records; the report is rewritten after each):

    Table 1   clean, FGSM, PGD-20/50/200, BIM-200, C&W-200 (margin loss), AutoAttack (standard),
              each without a defense, with the reverse attack and with random noise of the
              same eps_v (the paper's baseline), on 1,000 class-balanced test images
    Table 5   PGD-20/200 and C&W-200 under L2 eps 1.5 with the L2 repair (eps_v 3)
    Fig. 5    accuracy at each repair step (early stopping) and the measured time per image
    Fig. 6    PGD-20 accuracy against the attack's eps
    Fig. 7    the eps_v trade-off, reverse attack against random noise
    Fig. 8    PCA of penultimate features with repair trajectories, and the D_ca / D_ci statistic
    Fig. 3/4  the loss histograms and repaired examples; the defense-aware attack (Eq. 8) at
              50 steps, and at 500 steps on fewer images (the supplement)
    lawhon    multi-task repairs (text and code weights; center and random masks) and an
              attacker aware of the contrastive task only vs of every task
    grid      base model (zoo / the demo's old 2-epoch recipe) x head (zoo / 1 epoch) x eps_v:
              which of them explains the old demo's result
    audit     ``advrepair.audit`` of the repair and of the noise control (quick preset)

Deviations from the paper, on purpose: Fashion-MNIST and small CNNs instead of CIFAR-10 and
WRN-28-10 (eps 0.1 instead of 8/255; the same command runs the paper's setting for users with
the data); FGSM and PGD-20 added to Table 1; C&W is the L-inf margin-loss PGD of robustness
papers in Table 1 and the L2 C&W clipped to the ball in Table 5; more images than the paper.

Example:
    >>> from advrepair.apps.experiments.mao2021 import Mao2021Config, run_mao2021_experiment
    >>> run_mao2021_experiment(Mao2021Config.quick(out=Path("/tmp/mao2021-quick")))
"""
from advrepair.apps.experiments.mao2021.config import Mao2021Config, Row, l2_rows, linf_rows
from advrepair.apps.experiments.mao2021.report import feature_statistics, write_mao2021_report
from advrepair.apps.experiments.mao2021.run import STAGES, run_mao2021_experiment

__all__ = ["Mao2021Config", "Row", "STAGES", "feature_statistics", "l2_rows", "linf_rows", "run_mao2021_experiment",
           "write_mao2021_report"]
